"""RouterAdmin's answers as text a person reads in a terminal: aligned tables, one per list."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

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


def report(r: rpb.GetExperimentReportResponse) -> str:
    phase = "current phase" if r.current_phase else "an earlier phase"
    out = [f"experiment {r.experiment}, seed {r.seed} ({phase}): {r.verdict}"]
    if r.rolled_back:
        out.append("rolled back by the rollout controller (coverage in force: 0)")
    out += [f"  - {reason}" for reason in r.reasons]
    out += ["", table(["ARM", "MODEL", "WEIGHT", "REQUESTS"],
                      [[a.name, a.model, f"{a.weight:g}", a.count] for a in r.arms])]  # fmt: skip
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
    out += ["", table(headers, rows)]
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
