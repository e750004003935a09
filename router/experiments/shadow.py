"""Shadow traffic: a copy of some requests goes to a shadow model in the background, with
bounded concurrency; the shadow can never delay, change or fail the client's response.
Agreement with the served output is recorded per (primary, shadow) pair."""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from gamaserving.oip import ModelOutput
from router.experiments.assignment import fnv1a32

log = logging.getLogger(__name__)


def label_agreement(a: ModelOutput, b: ModelOutput) -> float | None:
    """1 when the top labels match, else 0 (None when either has no labels)."""
    if not a.labels or not b.labels:
        return None
    return float(a.labels[0] == b.labels[0])


def embedding_cosine(a: ModelOutput, b: ModelOutput) -> float | None:
    if a.features is None or b.features is None or a.features.size != b.features.size:
        return None
    x, y = a.features.reshape(-1).astype(np.float64), b.features.reshape(-1).astype(np.float64)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norm) if norm > 0 else None


def text_similarity(a: ModelOutput, b: ModelOutput) -> float | None:
    """Word-level similarity ratio in [0, 1]."""
    if a.text is None or b.text is None:
        return None
    return difflib.SequenceMatcher(None, a.text.lower().split(), b.text.lower().split()).ratio()


@dataclass
class AgreementStats:
    compared: int = 0
    failed: int = 0
    dropped: int = 0
    sums: dict[str, float] | None = None
    counts: dict[str, int] | None = None

    def add(self, measures: dict[str, float | None]) -> None:
        self.compared += 1
        self.sums = self.sums or defaultdict(float)
        self.counts = self.counts or defaultdict(int)
        for key, value in measures.items():
            if value is not None:
                self.sums[key] += value
                self.counts[key] += 1

    def mean(self, key: str) -> float:
        if not self.counts or not self.counts.get(key):
            return float("nan")
        assert self.sums is not None
        return self.sums[key] / self.counts[key]


def sampled(request_id: str, percent: float) -> bool:
    """Deterministic per request id, so a retried request is shadowed the same way."""
    return (fnv1a32("shadow:" + request_id) % 10000) < percent * 100


class ShadowRunner:
    def __init__(
        self,
        on_outcome: Callable[[str, str, str], None] = lambda primary, shadow, outcome: None,
        on_agreement: Callable[[str, str, str, float], None] = lambda p, s, m, v: None,
    ) -> None:
        self.stats: dict[tuple[str, str], AgreementStats] = defaultdict(AgreementStats)
        self._on_outcome = on_outcome
        """(primary, shadow, outcome: ok, failed or dropped), counted under their own labels."""
        self._on_agreement = on_agreement
        """(primary, shadow, measure, value) for each agreement measure a pair has."""
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(
        self,
        primary: str,
        served: ModelOutput,
        shadow: str,
        max_concurrency: int,
        call: Callable[[], Awaitable[ModelOutput]],
    ) -> bool:
        """Start a shadow call unless `max_concurrency` are already running (then drop it)."""
        slots = self._slots.setdefault(shadow, asyncio.Semaphore(max_concurrency))
        stats = self.stats[(primary, shadow)]
        if slots.locked():
            stats.dropped += 1
            self._outcome(primary, shadow, "dropped")
            return False
        task = asyncio.get_running_loop().create_task(
            self._run(slots, stats, served, call, (primary, shadow))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(
        self,
        slots: asyncio.Semaphore,
        stats: AgreementStats,
        served: ModelOutput,
        call: Callable[[], Awaitable[ModelOutput]],
        pair: tuple[str, str],
    ) -> None:
        async with slots:
            try:
                shadow = await call()
            except Exception as exc:
                stats.failed += 1
                self._outcome(*pair, "failed")
                log.debug("shadow call failed: %s", exc)
                return
        self._outcome(*pair, "ok")
        measures = {
            "label_agreement": label_agreement(served, shadow),
            "embedding_cosine": embedding_cosine(served, shadow),
            "text_similarity": text_similarity(served, shadow),
        }
        stats.add(measures)
        for name, value in measures.items():
            if value is not None:
                self._on_agreement(*pair, name, value)

    def running(self) -> int:
        """Shadow copies in flight."""
        return len(self._tasks)

    def _outcome(self, primary: str, shadow: str, outcome: str) -> None:
        self._on_outcome(primary, shadow, outcome)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
