"""The experiment's offline success criteria (`routes.<task>.experiment.offline` in the router
configuration), validated here: the router carries them without reading them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from gamaserving.settings import StrictSettings


class CriteriaError(ValueError):
    """An `offline` criterion of the router configuration is invalid; names the field."""


OfflineMetric = Literal[
    "wer",
    "cer",
    "accuracy",
    "macro_f1",
    "map",
    "knn_accuracy",
    "token_f1",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
]


class OfflineCriterion(StrictSettings):
    """A bound on how much worse a model may be than the baseline in `router compare`, in the
    metric's bad direction (up for WER and latency, down for accuracy, F1 and mAP)."""

    metric: OfflineMetric
    max_absolute_worsening: float | None = Field(None, ge=0)
    """E.g. 0.01 on `wer`: at most one point more WER."""
    max_relative_worsening: float | None = Field(None, ge=0)
    """E.g. 0.5 on `latency_p95_ms`: at most 1.5 times the baseline's p95."""

    @model_validator(mode="after")
    def _bound(self) -> OfflineCriterion:
        if self.max_absolute_worsening is None and self.max_relative_worsening is None:
            raise ValueError("set max_absolute_worsening or max_relative_worsening")
        return self


def parse_criteria(raw: list[dict[str, Any]], experiment: str) -> list[OfflineCriterion]:
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(OfflineCriterion.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'criterion'}: {e['msg']}"
                for e in exc.errors()
            )
            raise CriteriaError(f"experiment {experiment}: offline[{i}]: {problems}") from exc
    return out
