"""The experiment report document (router/results/document.py, `router report --json`'s) as
RouterAdmin's GetExperimentReportResponse: one document, two encodings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gamaserving.jsonout import none_to_nan
from gamaserving.router.v1 import router_pb2 as rpb
from router.config import ExperimentSettings


def _comparison(out: rpb.MetricComparison, c: Mapping[str, Any]) -> None:
    out.control_mean, out.arm_mean = none_to_nan(c["control_mean"]), none_to_nan(c["arm_mean"])
    out.difference = none_to_nan(c["difference"])
    out.ci_low, out.ci_high = (none_to_nan(x) for x in c["ci"])
    out.cs_low, out.cs_high = (none_to_nan(x) for x in c["confidence_sequence"])
    out.p_value = none_to_nan(c["p_value"])
    if "relative" in c:
        out.relative = none_to_nan(c["relative"])
        out.relative_ci_low, out.relative_ci_high = (none_to_nan(x) for x in c["relative_ci"])
    if "adjusted_p_value" in c:
        out.adjusted_p_value = c["adjusted_p_value"]


def _comparisons(target: Any, found: list[dict[str, Any]]) -> None:
    for c in found:
        out = target.add(arm=c["arm"], metric=c["metric"])
        _comparison(out, c)
        if "unadjusted" in c:
            out.unadjusted.arm, out.unadjusted.metric = c["arm"], c["metric"]
            _comparison(out.unadjusted, c["unadjusted"])
            out.cuped.theta = c["cuped"]["theta"]
            out.cuped.variance_reduction = c["cuped"]["variance_reduction"]
            out.cuped.users_with_history = c["cuped"]["users_with_history"]


def _segments(out: rpb.SegmentBreakdown, doc: Mapping[str, Any]) -> None:
    out.dimension, out.correction = doc["dimension"], doc["correction"]
    out.segment_alpha = doc["segment_alpha"]
    out.distinct_values, out.pooled_as_other = doc["distinct_values"], doc["pooled_as_other"]
    for s in doc["segments"]:
        segment = out.segments.add(value=s["value"], verdict=s["verdict"], reasons=s["reasons"])
        for arm, n in s["counts"].items():
            segment.arms.add(name=arm, count=n, users=s["units"].get(arm, 0))
        _comparisons(segment.comparisons, s["comparisons"])


def report_response(
    doc: Mapping[str, Any],
    settings: ExperimentSettings,
    rolled_back: bool,
    current_phase: bool,
    html: str = "",
) -> rpb.GetExperimentReportResponse:
    response = rpb.GetExperimentReportResponse(
        experiment=doc["experiment"],
        verdict=doc["verdict"],
        reasons=doc["reasons"],
        srm_p_value=doc["srm_p_value"],
        rolled_back=rolled_back,
        control_arm=doc["control"],
        seed=doc["seed"],
        current_phase=current_phase,
        html=html,
    )
    for arm in settings.arms:
        response.arms.add(
            name=arm.name,
            model=arm.model,
            weight=arm.weight,
            count=doc["counts"][arm.name],
            users=doc["units"].get(arm.name, 0),
        )
    _comparisons(response.comparisons, doc["comparisons"])
    if "segments" in doc:
        _segments(response.segments, doc["segments"])
    return response
