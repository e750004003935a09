"""`router report --segment NAME` (and GetExperimentReport's `segment`): every segment of a
dimension judged by the experiment's own report, with corrected p-values
(router/experiments/segments.py), as the report document's `segments` (the table a person
reads: router/admin/render.py)."""

from __future__ import annotations

from typing import Any

from router.config import ConfigError, ExperimentSettings, RouterConfig
from router.experiments.segments import TOP_SEGMENTS, Correction, judge_segments
from router.results.query import segment_statistics
from router.results.store import ResultsStore


def segments_json(
    config: RouterConfig,
    store: ResultsStore,
    settings: ExperimentSettings,
    seed: str,
    dimension: str,
    correction: Correction = "holm",
) -> dict[str, Any]:
    if dimension not in settings.dimensions:
        named = ", ".join(settings.dimensions) or "none (set `dimensions` on the experiment)"
        raise ConfigError(
            f"segment {dimension!r}: experiment {settings.name!r} records no such dimension; "
            f"its dimensions: {named}"
        )
    by_value, distinct = segment_statistics(
        store, settings.name, seed, dimension, sorted(config.outcomes), TOP_SEGMENTS
    )
    better = {m: o.better == "higher" for m, o in config.outcomes.items()}
    judged = judge_segments(settings, by_value, better, correction)
    return {
        "dimension": dimension,
        "correction": correction,
        # Each segment's intervals and verdict: the experiment's alpha over the segments.
        "segment_alpha": settings.alpha / max(len(judged), 1),
        "distinct_values": distinct,
        # Values past the TOP_SEGMENTS most frequent, pooled in the `other` segment.
        "pooled_as_other": max(distinct - TOP_SEGMENTS, 0),
        "segments": [
            {
                "value": s.value,
                "verdict": s.report.verdict,
                "reasons": s.report.reasons,
                "counts": s.report.counts,
                "units": {arm: a.units for arm, a in s.arms.items()},
                "comparisons": [
                    {
                        "arm": c.arm,
                        "metric": c.metric,
                        "control_mean": c.control_mean,
                        "arm_mean": c.arm_mean,
                        "difference": c.effect.difference,
                        "ci": list(c.effect.ci),
                        "p_value": c.effect.p_value,
                        "adjusted_p_value": s.adjusted_p[(c.arm, c.metric)],
                        "confidence_sequence": list(c.cs),
                    }
                    for c in s.report.comparisons
                ],
            }
            for s in judged
        ],
    }
