"""Validators by output kind. Each check reports its name, whether it passed, and details."""

from __future__ import annotations

import itertools
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gamaserving.oip import ModelInfo, ModelOutput
from router.config import QualitySettings


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    details: str = ""


def _check(name: str, ok: bool, details: Callable[[], str]) -> Check:
    """Details are built only for a failed check: this runs on every response."""
    return Check(name, True) if ok else Check(name, False, details())


def features(out: ModelOutput, info: ModelInfo | None, s: QualitySettings) -> list[Check]:
    v = out.features
    if v is None or v.size == 0:
        return [Check("features.present", False, "no EMBEDDING in the model's answer")]
    v = v.reshape(-1)
    checks = [Check("features.present", True)]
    if info is not None and info.embedding_size:
        size = info.embedding_size
        checks.append(
            _check(
                "features.dimension",
                v.size == size,
                lambda: f"{v.size} values; the model declares {size}",
            )
        )
    # One min and one max answer finiteness, range and degeneracy (NaN propagates through both).
    low, high = float(v.min()), float(v.max())
    finite = math.isfinite(low) and math.isfinite(high)
    checks.append(
        _check(
            "features.finite", finite, lambda: f"{int((~np.isfinite(v)).sum())} NaN or Inf values"
        )
    )
    if finite:
        peak = max(-low, high)
        checks.append(
            _check(
                "features.range",
                peak <= s.max_abs_feature,
                lambda: f"|value| reaches {peak:.3g} > {s.max_abs_feature:g}",
            )
        )
        checks.append(
            _check("features.degenerate", high > low, lambda: "all-zero or constant vector")
        )
    return checks


def patterns(out: ModelOutput, info: ModelInfo | None, s: QualitySettings) -> list[Check]:
    if not out.labels or len(out.labels) != len(out.scores):
        return [
            Check(
                "patterns.present", False, f"{len(out.labels)} labels with {len(out.scores)} scores"
            )
        ]
    scores = out.scores
    checks = [Check("patterns.present", True)]
    if info is not None and info.labels:
        unknown = [label for label in out.labels if label not in info.labels]
        checks.append(
            _check(
                "patterns.known_labels",
                not unknown,
                lambda: f"labels not in the model's set: {unknown[:5]}",
            )
        )
    in_range = all(0 <= x <= 1 for x in scores)  # False for NaN too
    checks.append(
        _check(
            "patterns.score_range",
            in_range,
            lambda: f"scores outside [0, 1]: {[round(x, 3) for x in scores[:5]]}",
        )
    )
    ordered = all(a >= b - 1e-9 for a, b in itertools.pairwise(scores))
    checks.append(
        _check("patterns.ordering", ordered, lambda: "scores are not in non-increasing order")
    )
    if s.min_confidence > 0:
        top = max(scores) if in_range else 0.0
        checks.append(
            _check(
                "patterns.confidence",
                top >= s.min_confidence,
                lambda: f"top score {top:.3f} < {s.min_confidence:g}",
            )
        )
    return checks


def text(out: ModelOutput, required: bool, s: QualitySettings) -> list[Check]:
    value = out.text or ""
    checks = []
    if required:
        checks.append(_check("text.non_empty", bool(value.strip()), lambda: "empty text"))
    checks.append(
        _check(
            "text.length",
            len(value) <= s.text_max_chars,
            lambda: f"{len(value)} characters > {s.text_max_chars}",
        )
    )
    bad = [
        c for c in value if c == "\ufffd" or (unicodedata.category(c) == "Cc" and c not in "\n\t")
    ]
    checks.append(
        _check("text.characters", not bad, lambda: f"{len(bad)} control or replacement characters")
    )
    return checks


def response_time(latency_ms: float, s: QualitySettings) -> list[Check]:
    slo = s.slo_ms
    if slo is None:
        return []
    return [
        _check("response_time", latency_ms <= slo, lambda: f"{latency_ms:.1f} ms > SLO {slo:g} ms")
    ]


def validate(
    task: str, out: ModelOutput, info: ModelInfo | None, s: QualitySettings, latency_ms: float
) -> list[Check]:
    """Every check that applies to `task`'s output."""
    checks: list[Check] = []
    if task == "embed":
        checks += features(out, info, s)
    elif task == "tag":
        checks += patterns(out, info, s)
    else:
        required = task == "describe" or s.require_transcript
        checks += text(out, required, s)
    return checks + response_time(latency_ms, s)
