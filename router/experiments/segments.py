"""Segments: an experiment's results broken down by a dimension recorded on each exposure (a
request metadata key, the clip's length bucket, the answering model's version), each segment
judged by the same report, with the p-values corrected for how many segments were looked at.

Holm is the default: it bounds the chance of *any* false segment finding (the family-wise
error rate), which is what a rollout that stops on "the candidate loses for long clips" needs.
Benjamini-Hochberg (`--correction bh`) bounds the expected share of false findings among those
reported instead: more findings, for exploring where an effect lives, not for acting alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from router.config import ExperimentSettings
from router.experiments.clip_length import duration_bucket
from router.experiments.results import ArmResults, Report, report

MAX_VALUE_LENGTH = 64
"""A metadata value longer than this is cut to it (and counted), so no caller can make the
store hold long strings."""
TOP_SEGMENTS = 20
"""The most frequent values a report shows; the rest are pooled as OTHER."""
OTHER = "other"
UNSET = "(none)"
"""The segment of exposures without the dimension: the request had no such metadata, or was
recorded before the experiment named the dimension."""

Correction = Literal["holm", "bh"]


@dataclass(frozen=True)
class RequestFacts:
    """What the dimensions are read from, for one request."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    clip_seconds: float | None = None
    model_version: str = ""


def dimension_values(names: Sequence[str], facts: RequestFacts) -> tuple[dict[str, str], list[str]]:
    """Each named dimension's value for one request (absent names are left out), and the
    names whose value was cut to MAX_VALUE_LENGTH."""
    values: dict[str, str] = {}
    cut: list[str] = []
    for name in names:
        if name == "audio_duration":
            value: str | None = duration_bucket(facts.clip_seconds)
        elif name == "model_version":
            value = facts.model_version or None
        else:
            value = facts.metadata.get(name)
        if value is None:
            continue
        if len(value) > MAX_VALUE_LENGTH:
            value = value[:MAX_VALUE_LENGTH]
            cut.append(name)
        values[name] = value
    return values, cut


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: the k-th smallest times (m - k + 1), kept
    non-decreasing, at most 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values): the k-th smallest times m / k, kept
    non-increasing from the largest down, at most 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i], reverse=True)
    adjusted = [1.0] * m
    running = 1.0
    for back, i in enumerate(order):
        running = min(running, p_values[i] * m / (m - back))
        adjusted[i] = running
    return adjusted


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


@dataclass(frozen=True)
class Segment:
    value: str
    arms: dict[str, ArmResults]
    report: Report
    adjusted_p: dict[tuple[str, str], float]
    """(arm, metric) -> the comparison's p-value corrected across the segments."""


def judge_segments(
    settings: ExperimentSettings,
    by_value: Mapping[str, dict[str, ArmResults]],
    better: Mapping[str, bool],
    correction: Correction = "holm",
) -> list[Segment]:
    """Every segment judged by the experiment's own report at alpha / segments (Bonferroni on
    the always-valid intervals, so a segment verdict stays an alpha-level statement across
    them), and each comparison's Welch p-value corrected across the segments that have it."""
    k = max(len(by_value), 1)
    narrowed = settings.model_copy(update={"alpha": settings.alpha / k})
    reports = {v: report(narrowed, arms, better) for v, arms in by_value.items()}
    keys = {(c.arm, c.metric) for r in reports.values() for c in r.comparisons}
    adjusted: dict[str, dict[tuple[str, str], float]] = {v: {} for v in by_value}
    for key in keys:
        found = [(v, c.effect.p_value) for v, r in reports.items()
                 for c in r.comparisons if (c.arm, c.metric) == key]  # fmt: skip
        for (v, _), q in zip(found, CORRECTIONS[correction]([p for _, p in found]), strict=True):
            adjusted[v][key] = q
    return [Segment(v, dict(by_value[v]), reports[v], adjusted[v]) for v in by_value]
