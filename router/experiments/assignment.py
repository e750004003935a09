"""Sticky assignment as a pure function of (seed, user id): the same arm on every replica and
after restarts, with no per-user memory (GrowthBook's v2 hashing and bucket ranges)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from router.config import ExperimentSettings

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a32(text: str) -> int:
    h = _FNV_OFFSET
    for byte in text.encode():
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def bucket(seed: str, user_id: str) -> float:
    """The user's place in [0, 1), in steps of 1/10000 (hashed twice, as GrowthBook v2)."""
    return (fnv1a32(str(fnv1a32(seed + user_id))) % 10000) / 10000


def ranges(weights: list[float], coverage: float) -> list[tuple[float, float]]:
    """Arm i owns [cum_i, cum_i + coverage * w_i): raising coverage only extends each range,
    so a user inside an arm stays in it."""
    out = []
    cumulative = 0.0
    for w in weights:
        out.append((cumulative, cumulative + coverage * w))
        cumulative += w
    return out


def choose(n: float, arm_ranges: list[tuple[float, float]]) -> int | None:
    for i, (start, end) in enumerate(arm_ranges):
        if start <= n < end:
            return i
    return None


@dataclass(frozen=True)
class Assignment:
    experiment: str
    arm: str
    model: str
    forced: bool = False


def assign(
    experiment: ExperimentSettings, user_id: str | None, rng: random.Random | None = None
) -> Assignment | None:
    """The user's arm, or None outside coverage. Without a user id, each request is
    assigned on its own (uniformly), so such traffic splits but nothing is sticky."""
    if user_id and user_id in experiment.allowlist:
        name = experiment.allowlist[user_id]
        arm = next(a for a in experiment.arms if a.name == name)
        return Assignment(experiment.name, arm.name, arm.model, forced=True)
    n = bucket(experiment.seed, user_id) if user_id else (rng or random).randrange(10000) / 10000
    index = choose(n, ranges([a.weight for a in experiment.arms], experiment.coverage))
    if index is None:
        return None
    arm = experiment.arms[index]
    return Assignment(experiment.name, arm.name, arm.model)
