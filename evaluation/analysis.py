"""The comparison report as plain data: per-model quality, speed and memory; paired tests
against the baseline; the success criteria with bootstrap intervals; a recommendation."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from scipy import stats

from evaluation.columns import HIGHER_IS_BETTER, LATENCY_QUANTILES, Columns
from evaluation.criteria import OfflineCriterion

RESAMPLES = 1000
SEED = 0


def default_criteria(task: str) -> list[OfflineCriterion]:
    """Used when the experiment declares none: quality no worse by one point, p95 latency no
    more than 1.5 times."""
    quality = {
        "transcribe": "wer",
        "tag": "accuracy",
        "embed": "knn_accuracy",
        "describe": "token_f1",
    }[task]
    return [
        OfflineCriterion.model_validate({"metric": quality, "max_absolute_worsening": 0.01}),
        OfflineCriterion(metric="latency_p95_ms", max_relative_worsening=0.5),
    ]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _distribution(values: np.ndarray) -> dict[str, float | None]:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    return {
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "p99": float(np.percentile(v, 99)),
        "mean": float(v.mean()),
    }


def model_summary(cols: Columns) -> dict[str, Any]:
    everything = np.arange(len(cols.status))
    errors = Counter(s for s in cols.status if s != "OK")
    per_class: dict[str, float] = {}
    for label in sorted(set(cols.truth) - {""}):
        mask = np.array([t == label for t in cols.truth])
        per_class[label] = float(cols.correct[mask].mean())
    # Only label-predicting tasks (tag, embed's kNN) have a confusion between classes.
    confusions = Counter(
        (t, p or "(none)")
        for t, p, ok in zip(cols.truth, cols.predicted, cols.correct, strict=False)
        if not ok
    )
    return {
        "clips": len(cols.status),
        "errors": dict(errors),
        "error_rate": sum(errors.values()) / max(len(cols.status), 1),
        "quality": {
            m: _finite(cols.metric(m, everything))
            for m in cols.available()
            if m not in LATENCY_QUANTILES
        },
        "latency_ms": {
            "client": _distribution(cols.latency_ms),
            "server_queue": _distribution(cols.queue_ms),
            "server_compute": _distribution(cols.compute_ms),
        },
        "per_class_accuracy": per_class,
        "edit_kinds": cols.edit_kinds,
        "confusions": [
            {"truth": t, "predicted": p, "count": n} for (t, p), n in confusions.most_common(10)
        ],
    }


def mcnemar(only_model: int, only_base: int) -> float:
    """Exact McNemar: the discordant pairs against a fair coin."""
    n = only_model + only_base
    return float(stats.binomtest(only_model, n, 0.5).pvalue) if n else 1.0


def wilcoxon(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided signed-rank p-value (zero differences dropped, normal approximation)."""
    if np.all(x == y):
        return 1.0
    result = stats.wilcoxon(x, y, zero_method="wilcox", correction=False, method="approx")
    return float(result.pvalue)


def paired_bootstrap(
    x: np.ndarray, y: np.ndarray, alpha: float, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, tuple[float, float]]:
    """mean(x - y) and its percentile bootstrap interval, resampling pairs."""

    def mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(np.mean(a - b, axis=axis))

    if np.all(x - y == (x - y)[0]):
        d = float((x - y)[0])
        return d, (d, d)  # no spread: scipy's bootstrap refuses a degenerate sample
    result = stats.bootstrap(
        (x, y),
        mean_difference,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=1 - alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return float(np.mean(x - y)), (float(ci.low), float(ci.high))


def paired_tests(model: Columns, base: Columns, alpha: float) -> dict[str, Any]:
    only_model = int(np.sum(model.correct & ~base.correct))
    only_base = int(np.sum(~model.correct & base.correct))
    both = ~np.isnan(model.latency_ms) & ~np.isnan(base.latency_ms)
    out: dict[str, Any] = {
        "mcnemar": {
            "only_model_right": only_model,
            "only_baseline_right": only_base,
            "p_value": mcnemar(only_model, only_base),
        },
    }
    for name, x, y in (
        ("per_clip_error", model.per_clip_error, base.per_clip_error),
        ("latency_ms", model.latency_ms[both], base.latency_ms[both]),
    ):
        if len(x) < 2:
            continue
        diff, (lo, hi) = paired_bootstrap(x, y, alpha)
        out[name] = {
            "mean_difference": diff,
            "ci": [lo, hi],
            "wilcoxon_p_value": wilcoxon(x, y),
        }
    return out


def _worsening(metric: str, model_value: float, base_value: float, relative: bool) -> float:
    worse = base_value - model_value if metric in HIGHER_IS_BETTER else model_value - base_value
    if relative:
        return worse / abs(base_value) if base_value else (0.0 if worse <= 0 else math.inf)
    return worse


def check_criterion(
    criterion: OfflineCriterion, model: Columns, base: Columns, alpha: float
) -> list[dict[str, Any]]:
    """One row per declared bound: the worsening's point estimate and paired percentile
    bootstrap interval. Met when the whole interval is within the bound, violated when it is
    wholly beyond, inconclusive otherwise."""
    metric = criterion.metric
    if metric not in model.available():
        return [{"metric": metric, "status": "not_applicable"}]
    n = len(model.status)
    everything = np.arange(n)
    rng = np.random.default_rng(SEED)
    draws = rng.integers(0, n, size=(RESAMPLES, n))
    m_all, b_all = model.metric(metric, everything), base.metric(metric, everything)
    m_draws = np.array([model.metric(metric, idx) for idx in draws])
    b_draws = np.array([base.metric(metric, idx) for idx in draws])
    rows = []
    for relative, bound in (
        (False, criterion.max_absolute_worsening),
        (True, criterion.max_relative_worsening),
    ):
        if bound is None:
            continue
        point = _worsening(metric, m_all, b_all, relative)
        sample = np.array(
            [_worsening(metric, m, b, relative) for m, b in zip(m_draws, b_draws, strict=True)]
        )
        sample = sample[np.isfinite(sample)]
        lo, hi = (
            (float(np.quantile(sample, alpha / 2)), float(np.quantile(sample, 1 - alpha / 2)))
            if sample.size
            else (math.nan, math.nan)
        )
        status = "met" if hi <= bound else "violated" if lo > bound else "inconclusive"
        rows.append(
            {
                "metric": metric,
                "kind": "relative" if relative else "absolute",
                "bound": bound,
                "model_value": _finite(m_all),
                "baseline_value": _finite(b_all),
                "worsening": _finite(point),
                "ci": [_finite(lo), _finite(hi)],
                "status": status,
            }
        )
    return rows


def recommend(
    model: str, baseline: str, rows: list[dict[str, Any]], alpha: float
) -> dict[str, Any]:
    checked = [r for r in rows if r["status"] != "not_applicable"]
    violated = [r for r in checked if r["status"] == "violated"]
    open_ = [r for r in checked if r["status"] == "inconclusive"]

    def name(r: dict[str, Any]) -> str:
        return f"{r['metric']} ({r['kind']} bound {r['bound']:g})"

    if not checked:
        return {"verdict": "INCONCLUSIVE", "reasons": ["no criterion applies to this task"]}
    if violated:
        return {
            "verdict": "KEEP_BASELINE",
            "reasons": [
                f"{model} is worse than {baseline} beyond the bound on {name(r)}: worsening "
                f"{r['worsening']:.4g}, interval [{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]"
                for r in violated
            ],
        }
    if open_:
        return {
            "verdict": "INCONCLUSIVE",
            "reasons": [
                f"{name(r)}: interval [{r['ci'][0]:.4g}, {r['ci'][1]:.4g}] straddles the "
                "bound; more clips would settle it"
                for r in open_
            ],
        }
    return {
        "verdict": "ADOPT",
        "reasons": [
            f"every criterion holds for {model} against {baseline} with "
            f"{100 * (1 - alpha):g}% paired bootstrap intervals"
        ],
    }
