"""Validators by output kind. Each check reports its name, whether it passed, and details."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np

from router.config import QualitySettings
from router.outputs import ModelInfo, ModelOutput


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    details: str = ""


def _check(name: str, ok: bool, details: str) -> Check:
    return Check(name, ok, "" if ok else details)


def features(out: ModelOutput, info: ModelInfo | None, s: QualitySettings) -> list[Check]:
    v = out.features
    if v is None or v.size == 0:
        return [Check("features.present", False, "no EMBEDDING in the model's answer")]
    v = v.reshape(-1)
    checks = [Check("features.present", True)]
    if info is not None and info.embedding_size:
        checks.append(
            _check(
                "features.dimension",
                v.size == info.embedding_size,
                f"{v.size} values; the model declares {info.embedding_size}",
            )
        )
    finite = bool(np.isfinite(v).all())
    checks.append(
        _check("features.finite", finite, f"{int((~np.isfinite(v)).sum())} NaN or Inf values")
    )
    if finite:
        peak = float(np.abs(v).max())
        checks.append(
            _check(
                "features.range",
                peak <= s.max_abs_feature,
                f"|value| reaches {peak:.3g} > {s.max_abs_feature:g}",
            )
        )
        degenerate = peak == 0 or float(v.max() - v.min()) == 0
        checks.append(_check("features.degenerate", not degenerate, "all-zero or constant vector"))
    return checks


def patterns(out: ModelOutput, info: ModelInfo | None, s: QualitySettings) -> list[Check]:
    if not out.labels or len(out.labels) != len(out.scores):
        return [
            Check(
                "patterns.present", False, f"{len(out.labels)} labels with {len(out.scores)} scores"
            )
        ]
    scores = np.asarray(out.scores, dtype=np.float64)
    checks = [Check("patterns.present", True)]
    if info is not None and info.labels:
        unknown = sorted(set(out.labels) - info.labels)
        checks.append(
            _check(
                "patterns.known_labels",
                not unknown,
                f"labels not in the model's set: {unknown[:5]}",
            )
        )
    in_range = bool(np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all())
    checks.append(
        _check(
            "patterns.score_range",
            in_range,
            f"scores outside [0, 1]: min {np.nanmin(scores):.3g}, max {np.nanmax(scores):.3g}",
        )
    )
    checks.append(
        _check(
            "patterns.ordering",
            bool((np.diff(scores) <= 1e-9).all()),
            "scores are not in non-increasing order",
        )
    )
    if s.min_confidence > 0:
        top = float(scores.max()) if in_range else 0.0
        checks.append(
            _check(
                "patterns.confidence",
                top >= s.min_confidence,
                f"top score {top:.3f} < {s.min_confidence:g}",
            )
        )
    return checks


def text(out: ModelOutput, required: bool, s: QualitySettings) -> list[Check]:
    value = out.text or ""
    checks = []
    if required:
        checks.append(_check("text.non_empty", bool(value.strip()), "empty text"))
    checks.append(
        _check(
            "text.length",
            len(value) <= s.text_max_chars,
            f"{len(value)} characters > {s.text_max_chars}",
        )
    )
    bad = [
        c for c in value if c == "\ufffd" or (unicodedata.category(c) == "Cc" and c not in "\n\t")
    ]
    checks.append(
        _check("text.characters", not bad, f"{len(bad)} control or replacement characters")
    )
    return checks


def response_time(latency_ms: float, s: QualitySettings) -> list[Check]:
    if s.slo_ms is None:
        return []
    return [
        _check(
            "response_time", latency_ms <= s.slo_ms, f"{latency_ms:.1f} ms > SLO {s.slo_ms:g} ms"
        )
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
