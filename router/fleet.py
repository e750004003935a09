"""`router report --prometheus URL --experiment NAME`: the experiment report for a whole fleet,
from the per-arm sufficient statistics Prometheus has summed over every router replica, for
the phase (seed) now configured."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from router.config import ExperimentSettings
from router.experiments.results import METRICS, ArmResults, Report
from router.experiments.stats import Moments

SERIES = ("observations", "sum", "sum_squares")


class FleetError(Exception):
    """Prometheus could not be queried; the message says why."""


def _query(base: str, expr: str, timeout: float) -> list[dict[str, Any]]:
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise FleetError(f"cannot query {base}: {exc}") from exc
    if body.get("status") != "success":
        raise FleetError(f"Prometheus refused {expr!r}: {body.get('error', body)}")
    return list(body["data"]["result"])


def fleet_arms(
    prometheus: str, experiment: str, seed: str, timeout: float = 10.0
) -> dict[str, ArmResults]:
    """One phase's per-arm statistics, summed over every replica Prometheus scrapes."""
    values: dict[tuple[str, str], list[float]] = {}
    # Quoted, escaped label values.
    selector = f"experiment={json.dumps(experiment)},seed={json.dumps(seed)}"
    for index, series in enumerate(SERIES):
        metric = f"gamaserving_router_experiment_{series}_total{{{selector}}}"
        expr = f"sum by (arm, metric) ({metric})"
        for item in _query(prometheus, expr, timeout):
            key = (item["metric"].get("arm", ""), item["metric"].get("metric", ""))
            values.setdefault(key, [0.0, 0.0, 0.0])[index] = float(item["value"][1])
    arms: dict[str, ArmResults] = {}
    for (arm, metric), (n, total, squares) in values.items():
        if metric in METRICS:
            arms.setdefault(arm, ArmResults()).metrics[metric] = Moments(round(n), total, squares)
    return arms


def as_json(result: Report) -> dict[str, Any]:
    return {
        "experiment": result.experiment,
        "control": result.control,
        "verdict": result.verdict,
        "reasons": result.reasons,
        "counts": result.counts,
        "srm_p_value": result.srm_p_value,
        "comparisons": [
            {
                "arm": c.arm,
                "metric": c.metric,
                "control_mean": c.control_mean,
                "arm_mean": c.arm_mean,
                "difference": c.effect.difference,
                "ci": list(c.effect.ci),
                "relative": c.effect.relative,
                "relative_ci": list(c.effect.relative_ci),
                "p_value": c.effect.p_value,
                "confidence_sequence": list(c.cs),
            }
            for c in result.comparisons
        ],
    }


def find_experiment(routes: Any, name: str) -> ExperimentSettings | None:
    return next(
        (r.experiment for r in routes.values() if r.experiment and r.experiment.name == name), None
    )
