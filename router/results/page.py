"""`router report --html OUT.html`: the experiment's results page, one self-contained file.

No script, no stylesheet or font from elsewhere: plots are inline SVG drawn by matplotlib (as
`evaluation`'s report draws them), glyphs as paths, so the page reads the same offline, in a
mail attachment, or with JavaScript off. It shows the verdict and its reasons, the split
check, each arm's users, requests and means, a forest plot of every comparison's effect with
its fixed-horizon and always-valid intervals against the bound its criterion allows, the
cumulative effect over the phase with its always-valid band, each declared dimension's
segments with corrected p-values, and the ramp history.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np

from router.config import ExperimentSettings
from router.experiments.results import SRM_ALPHA, allowed_difference
from router.experiments.results import report as judge
from router.results.query import phase_span, phase_statistics_from_events
from router.results.store import ResultsStore
from router.rollout.state import Decision

TIMELINE_POINTS = 12


@dataclass(frozen=True)
class Point:
    """One comparison as the phase stood at `at`."""

    at: float
    arm: str
    metric: str
    difference: float
    cs: tuple[float, float]


def timeline(
    store: ResultsStore,
    settings: ExperimentSettings,
    seed: str,
    outcome_metrics: Sequence[str],
    better: Mapping[str, bool],
    points: int = TIMELINE_POINTS,
) -> list[Point]:
    """Every comparison at `points` times across the phase, each computed from the exposures
    up to that time by the same `report` the verdict comes from."""
    span = phase_span(store, settings.name, seed)
    if span is None:
        return []
    first, last = span
    out: list[Point] = []
    for at in np.linspace(first, last, points + 1)[1:] if last > first else [last]:
        arms = phase_statistics_from_events(store, settings.name, seed, outcome_metrics, at)
        for c in judge(settings, arms, better).comparisons:
            out.append(Point(float(at), c.arm, c.metric, c.effect.difference, c.cs))
    return out


def _bounds(settings: ExperimentSettings, metric: str, control_mean: float, higher: bool
            ) -> list[tuple[str, float]]:  # fmt: skip
    """Where each criterion on `metric` puts the edge of acceptable, as a difference."""
    sign = -1.0 if higher else 1.0
    found = [("guardrail", g) for g in settings.guardrails if g.metric == metric]
    found += [("success", s) for s in settings.success if s.metric == metric]
    return [(kind, sign * allowed_difference(c, control_mean)) for kind, c in found]


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "path"  # glyphs as paths: no font needed to view
    plt.rcParams["svg.hashsalt"] = "gama-serving"  # the same page for the same data
    return plt


def forest(report: Mapping[str, Any], settings: ExperimentSettings,
           better: Mapping[str, bool]) -> str:  # fmt: skip
    """Every comparison's difference with its intervals, one row each, against its bounds."""
    plt = _pyplot()
    comparisons = report["comparisons"]
    fig, axes = plt.subplots(len(comparisons), 1, figsize=(7, 1.1 * len(comparisons) + 0.8),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, c in zip(axes[:, 0], comparisons, strict=True):
        low, high = c["confidence_sequence"]
        ax.hlines(0, low, high, linewidth=6, color="#9ecae1", label="always-valid")
        ax.hlines(0, *c["ci"], linewidth=2, color="#3182bd", label="fixed-horizon 95%")
        ax.plot([c["difference"]], [0], "o", color="#08519c")
        ax.axvline(0, color="#555", linewidth=0.8)
        higher = better.get(c["metric"], False)
        for kind, x in _bounds(settings, c["metric"], c["control_mean"], higher):
            ax.axvline(x, linestyle="--", color="#d62728" if kind == "guardrail" else "#2ca02c")
        ax.set_yticks([0], [f"{c['arm']}: {c['metric']}"])
        ax.set_ylim(-1, 1)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside upper right", fontsize=7,
               ncol=2)  # fmt: skip
    axes[-1, 0].set_xlabel("arm - control (dashed: red guardrail, green success bound)")
    svg = _svg(fig)
    plt.close(fig)
    return svg


def over_time(points: Sequence[Point]) -> str:
    """Each comparison's difference over the phase, with its always-valid band."""
    plt = _pyplot()
    keys = sorted({(p.arm, p.metric) for p in points})
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.0 * len(keys) + 0.4), squeeze=False,
                             layout="constrained")  # fmt: skip
    start = min(p.at for p in points)
    for ax, (arm, metric) in zip(axes[:, 0], keys, strict=True):
        mine = [p for p in points if (p.arm, p.metric) == (arm, metric)]
        minutes = [(p.at - start) / 60 for p in mine]
        ax.fill_between(minutes, [p.cs[0] for p in mine], [p.cs[1] for p in mine],
                        color="#9ecae1", label="always-valid")  # fmt: skip
        ax.plot(minutes, [p.difference for p in mine], color="#08519c", marker=".")
        ax.axhline(0, color="#555", linewidth=0.8)
        ax.set_title(f"{arm}: {metric}", fontsize=9)
    axes[-1, 0].set_xlabel("minutes since the phase's first exposure")
    svg = _svg(fig)
    plt.close(fig)
    return svg


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cuped(comparison: Mapping[str, Any]) -> str:
    """What CUPED did to one comparison: the variance it removed, from how many users'
    history; `off` without it (the numbers beside it are then unadjusted)."""
    cuped = comparison.get("cuped")
    if cuped is None:
        return "off"
    return f"-{cuped['variance_reduction']:.0%} ({cuped['users_with_history']})"


def _num(x: object) -> str:
    if not isinstance(x, int | float) or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.4g}"


def _segments(doc: Mapping[str, Any], alpha: float) -> list[str]:
    """One dimension's segments (`router report --segment`): a row per segment and
    comparison; a corrected p-value under alpha is marked."""
    method = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[doc["correction"]]
    head = (f"<h2>Segments by {escape(doc['dimension'])}</h2><p>p-values corrected by "
            f"{method} across {len(doc['segments'])} segments; each segment's intervals and "
            f"verdict at alpha / segments ({doc['segment_alpha']:.3g})"
            + (f"; {doc['pooled_as_other']} rarer values pooled as other" if doc["pooled_as_other"]
               else "") + ".</p>")  # fmt: skip
    rows = []
    for seg in doc["segments"]:
        users = ", ".join(f"{arm} {n}" for arm, n in seg["units"].items())
        if not seg["comparisons"]:  # too few users in an arm to compare yet
            rows.append([seg["value"], "-", "-", users, *["-"] * 5, seg["verdict"]])
        for c in seg["comparisons"]:
            q = c["adjusted_p_value"]
            cs = c["confidence_sequence"]
            rows.append([seg["value"], c["arm"], c["metric"], users, _num(c["difference"]),
                         f"[{_num(c['ci'][0])}, {_num(c['ci'][1])}]",
                         f"[{_num(cs[0])}, {_num(cs[1])}]", _num(c["p_value"]),
                         _num(q) + (" *" if q < alpha else ""), seg["verdict"]])  # fmt: skip
    level = f"{1 - doc['segment_alpha']:.1%}"
    header = ["segment", "arm", "metric", "users", "difference", f"{level} interval",
              "always-valid", "p", f"adjusted p (* under {alpha:g})", "verdict"]  # fmt: skip
    return [head, _table(header, rows)]


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;"
    "padding:.2rem .5rem;text-align:right}th:first-child,td:first-child{text-align:left}"
    ".verdict{font-size:1.4rem;font-weight:bold}.warn{color:#b00020;font-weight:bold}"
    "svg{max-width:100%;height:auto}"
)


def render(
    report: Mapping[str, Any],
    settings: ExperimentSettings,
    better: Mapping[str, bool],
    points: Sequence[Point],
    history: Sequence[Decision],
) -> str:
    """The page, from `router report --json`'s document and what the store and the rollout
    state add to it."""
    e = escape
    title = f"Experiment {report['experiment']}, phase {report['seed']}"
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}"
             f"</title><style>{STYLE}</style></head><body><h1>{e(title)}</h1>"]  # fmt: skip
    parts.append(f'<p class="verdict">{e(report["verdict"])}</p><ul>')
    parts += [f"<li>{e(reason)}</li>" for reason in report["reasons"]]
    parts.append("</ul><h2>Split</h2>")
    srm = report["srm_p_value"]
    units = report["units"]
    weights = {a.name: a.weight for a in settings.arms}
    split = ", ".join(f"{a} {units.get(a, 0)} (weight {w:g})" for a, w in weights.items())
    line = f"Users per arm: {split}; sample-ratio check p = {srm:.3g}"
    if srm < SRM_ALPHA:
        line += " - the split is off: results are not trustworthy"
        parts.append(f'<p class="warn">{e(line)}</p>')
    else:
        parts.append(f"<p>{e(line)}</p>")
    metrics = sorted({m for means in report["means"].values() for m in means})
    rows = [[arm, units.get(arm, 0), n,
             *(_num(report["means"].get(arm, {}).get(m)) for m in metrics)]
            for arm, n in report["counts"].items()]  # fmt: skip
    parts += ["<h2>Arms</h2>", _table(["arm", "users", "requests", *metrics], rows)]
    if report["comparisons"]:
        parts += ["<h2>Effects against the control arm</h2>", forest(report, settings, better)]
        rows = [[c["arm"], c["metric"], _num(c["control_mean"]), _num(c["arm_mean"]),
                 _num(c["difference"]), f"[{_num(c['ci'][0])}, {_num(c['ci'][1])}]",
                 f"[{_num(c['confidence_sequence'][0])}, {_num(c['confidence_sequence'][1])}]",
                 _num(c["p_value"]), _cuped(c)] for c in report["comparisons"]]  # fmt: skip
        parts.append(_table(["arm", "metric", "control", "arm mean", "difference",
                             "95% interval", "always-valid", "p",
                             "CUPED variance (users with history)"], rows))  # fmt: skip
    if points:
        parts += ["<h2>Cumulative effect over the phase</h2>", over_time(points)]
    for doc in report.get("segments_by", []):
        parts += _segments(doc, settings.alpha)
    parts.append("<h2>Ramp history</h2>")
    if history:
        rows = [[d.action, f"{d.from_coverage:g} -> {d.to_coverage:g}", d.by, d.verdict,
                 "; ".join(d.reasons)] for d in history]  # fmt: skip
        parts.append(_table(["action", "coverage", "by", "verdict", "reasons"], rows))
    else:
        parts.append("<p>No rollout decision recorded for this phase.</p>")
    parts.append("</body></html>")
    return "".join(parts)
