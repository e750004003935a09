"""RouterAdmin's answers as text a person reads in a terminal: aligned tables, one per list."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from gamaserving.jsonout import none_to_nan
from gamaserving.router.v1 import router_pb2 as rpb


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart; `(none)` under the headers when empty."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    if not cells:
        lines.append("(none)")
    return "\n".join(lines)


def num(x: float, digits: int = 4) -> str:
    """A number, or `-` where it is undefined (NaN: no data, or a ratio to zero)."""
    return f"{x:.{digits}g}" if math.isfinite(x) else "-"


def interval(low: float, high: float) -> str:
    return f"[{num(low)}, {num(high)}]"


def pct(x: float) -> str:
    """A relative change as a signed percentage (`+12.3 %`), or `-` where it is undefined."""
    return f"{x * 100:+.1f} %" if math.isfinite(x) else "-"


def when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix)) if unix else "-"


def experiments(r: rpb.ListExperimentsResponse) -> str:
    rows = []
    for e in r.experiments:
        status = e.rollout_status or "-"
        if e.rollout_paused:
            status += " (paused)"
        arms = " ".join(f"{a.name}={a.model}:{a.weight:g}" for a in e.arms)
        shadow = f"{e.shadow_model} {e.shadow_percent:g}%" if e.shadow_model else "-"
        task = rpb.Task.Name(e.task).removeprefix("TASK_").lower()
        rows.append(
            [e.name, task, e.seed, f"{e.coverage:.0%}", e.coverage_source, status, arms, shadow]
        )
    headers = ["EXPERIMENT", "TASK", "SEED", "COVERAGE", "SOURCE", "ROLLOUT", "ARMS", "SHADOW"]
    return table(headers, rows)


def segments_plain(b: rpb.SegmentBreakdown) -> dict[str, Any]:
    """A SegmentBreakdown in `router report --json`'s shape, for segments_text."""
    return {
        "dimension": b.dimension, "correction": b.correction or "holm",
        "segment_alpha": b.segment_alpha, "distinct_values": b.distinct_values,
        "pooled_as_other": b.pooled_as_other,
        "segments": [{
            "value": s.value, "verdict": s.verdict,
            "units": {a.name: a.users for a in s.arms},
            "comparisons": [{
                "arm": c.arm, "metric": c.metric, "difference": c.difference,
                "ci": [c.ci_low, c.ci_high], "confidence_sequence": [c.cs_low, c.cs_high],
                "p_value": c.p_value, "adjusted_p_value": c.adjusted_p_value,
            } for c in s.comparisons],
        } for s in b.segments],
    }  # fmt: skip


def report(r: rpb.GetExperimentReportResponse) -> str:
    phase = "current phase" if r.current_phase else "an earlier phase"
    out = [f"experiment {r.experiment}, seed {r.seed} ({phase}): {r.verdict}"]
    if r.rolled_back:
        out.append("rolled back by the rollout controller (coverage in force: 0)")
    out += [f"  - {reason}" for reason in r.reasons]
    out += ["", table(["ARM", "MODEL", "WEIGHT", "USERS", "REQUESTS"],
                      [[a.name, a.model, f"{a.weight:g}", a.users, a.count]
                       for a in r.arms])]  # fmt: skip
    out.append(f"sample-ratio check: p = {num(r.srm_p_value)}")
    rows = [
        [
            c.arm,
            c.metric,
            num(c.control_mean),
            num(c.arm_mean),
            f"{num(c.difference)} {interval(c.ci_low, c.ci_high)}",
            f"{pct(c.relative)} [{pct(c.relative_ci_low)}, {pct(c.relative_ci_high)}]",
            num(c.p_value),
            interval(c.cs_low, c.cs_high),
        ]
        for c in r.comparisons
    ]
    headers = [
        "ARM", "METRIC", "CONTROL", "ARM MEAN", "DIFFERENCE [95%]", "RELATIVE [95%]", "P",
        "ALWAYS-VALID",
    ]  # fmt: skip
    if any(c.HasField("cuped") for c in r.comparisons):
        # Under CUPED the numbers above are the adjusted ones.
        headers.append("CUPED VARIANCE")
        for row, c in zip(rows, r.comparisons, strict=True):
            row.append(f"-{c.cuped.variance_reduction:.0%}" if c.HasField("cuped") else "-")
    out += ["", table(headers, rows)]
    if r.HasField("segments"):
        out += ["", segments_text(segments_plain(r.segments))]
    return "\n".join(out)


def assignments(r: rpb.GetAssignmentResponse) -> str:
    rows = [[a.user_id, a.experiment, a.arm or "(not in experiment)", a.model or "-"]
            for a in r.assignments]  # fmt: skip
    return table(["USER", "EXPERIMENT", "ARM", "MODEL"], rows) + (
        f"\ncoverage in force: {r.coverage:.0%}"
    )


def quality(r: rpb.GetQualityReportResponse) -> str:
    out = ["checks:", table(
        ["MODEL", "CHECK", "TOTAL", "FAILED", "PASS RATE", "RECENT"],
        [[c.model, c.check, c.total, c.failed, num(c.pass_rate), num(c.recent_pass_rate)]
         for c in r.checks],
    )]  # fmt: skip
    out += ["", "anomalies:", table(
        ["MODEL", "SIGNAL", "VALUE", "Z", "AT"],
        [[a.model, a.signal, num(a.value), num(a.zscore, 3), when(a.at_unix)] for a in r.anomalies],
    )]  # fmt: skip
    out += ["", "shadow agreement:", table(
        ["PRIMARY", "SHADOW", "COMPARED", "FAILED", "LABELS", "COSINE", "TEXT"],
        [[s.primary_model, s.shadow_model, s.compared, s.failed, num(s.label_agreement),
          num(s.embedding_cosine), num(s.text_similarity)] for s in r.shadow],
    )]  # fmt: skip
    out += ["", "trends:", table(
        ["MODEL", "METRIC", "POINTS", "LAST", "DIRECTION", "CHANGE"],
        [[t.model, t.metric, len(t.points), num(t.points[-1].value) if t.points else "-",
          t.direction, f"{t.relative_change:+.0%}" if math.isfinite(t.relative_change) else "-"]
         for t in r.trends],
    )]  # fmt: skip
    return "\n".join(out)


def alerts(items: Sequence[rpb.Alert]) -> str:
    rows = [
        [a.id, a.state, a.severity, a.name, when(a.started_at_unix), a.acknowledged_by or "-",
         a.summary]
        for a in items
    ]  # fmt: skip
    return table(["ID", "STATE", "SEVERITY", "NAME", "STARTED", "ACKED BY", "SUMMARY"], rows)


def health(statuses: dict[str, str]) -> str:
    return table(["SERVICE", "STATUS"], [[name or '""', s] for name, s in statuses.items()])


def segments_text(doc: dict[str, Any]) -> str:
    """One row per segment and comparison: the effect, its p-value before and after the
    correction, and the segment's own verdict."""
    method = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[doc["correction"]]
    rows = []
    for s in doc["segments"]:
        users = ", ".join(f"{arm} {n}" for arm, n in s["units"].items())
        for c in s["comparisons"] or [None]:
            if c is None:
                rows.append([s["value"], "-", "-", users, "-", "-", "-", "-", s["verdict"]])
                continue
            rows.append([
                s["value"], c["arm"], c["metric"], users,
                f"{num(c['difference'])} {interval(*(none_to_nan(x) for x in c['ci']))}",
                interval(*(none_to_nan(x) for x in c["confidence_sequence"])),
                f"{c['p_value']:.3g}", f"{c['adjusted_p_value']:.3g}", s["verdict"],
            ])  # fmt: skip
    level = f"{1 - doc['segment_alpha']:.1%}"
    headers = ["SEGMENT", "ARM", "METRIC", "USERS", f"DIFFERENCE [{level}]", "ALWAYS-VALID",
               "P", "ADJUSTED P", "VERDICT"]  # fmt: skip
    out = [
        f"segments by {doc['dimension']}: {len(doc['segments'])} shown, p-values corrected by "
        f"{method} across them; each segment's intervals and verdict at alpha / segments "
        f"({doc['segment_alpha']:.3g})",
    ]
    if doc["pooled_as_other"]:
        out.append(
            f"{doc['pooled_as_other']} of {doc['distinct_values']} values are pooled as `other` "
            f"(only the {len(doc['segments']) - 1} most frequent are shown on their own)"
        )
    return "\n".join([*out, "", table(headers, rows)])
