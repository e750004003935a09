"""report.md and a self-contained report.html: plots are inline SVG from matplotlib, with no
script, font or stylesheet fetched from anywhere."""

from __future__ import annotations

import html
import io
import math
from typing import Any

import numpy as np

from evaluation.columns import Columns


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def _tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    models = report["models"]
    metrics = sorted({m for s in models.values() for m in s["quality"]})
    tables = [
        (
            "Quality",
            ["model", "clips", "errors", *metrics],
            [
                [name, str(s["clips"]), str(sum(s["errors"].values()))]
                + [_fmt(s["quality"][m]) for m in metrics]
                for name, s in models.items()
            ],
        ),
        (
            "Latency (ms)",
            ["model", "where", "p50", "p95", "p99", "mean"],
            [
                [name, where, *(_fmt(d[q], 3) for q in ("p50", "p95", "p99", "mean"))]
                for name, s in models.items()
                for where, d in s["latency_ms"].items()
            ],
        ),
        (
            "Memory (reported by each model server)",
            ["model", "device", "max RSS during run", "peak RSS since start", "GPU"],
            [
                [
                    name,
                    s.get("device", ""),
                    _mib(s["memory"]["rss_bytes"]),
                    _mib(s["memory"]["peak_rss_bytes"]),
                    _mib(s["memory"]["gpu_bytes"]),
                ]
                for name, s in models.items()
            ],
        ),
    ]
    for comp in report["comparisons"]:
        rows = [
            [
                r["metric"],
                r.get("kind", ""),
                _fmt(r.get("bound")),
                _fmt(r.get("model_value")),
                _fmt(r.get("baseline_value")),
                _fmt(r.get("worsening")),
                "[" + ", ".join(_fmt(x) for x in r.get("ci", [None, None])) + "]",
                r["status"],
            ]
            for r in comp["criteria"]
        ]
        tables.append(
            (
                f"Criteria: {comp['model']} against {comp['baseline']}",
                [
                    "metric",
                    "bound",
                    "allowed",
                    comp["model"],
                    comp["baseline"],
                    "worsening",
                    f"{100 * (1 - report['alpha']):g}% CI",
                    "status",
                ],
                rows,
            )
        )
        paired = comp["paired"]
        mc = paired["mcnemar"]
        prow = [
            [
                "correct per clip (McNemar)",
                f"only {comp['model']} right: {mc['only_model_right']}, only "
                f"{comp['baseline']} right: {mc['only_baseline_right']}",
                _fmt(mc["p_value"]),
            ]
        ]
        for key in ("per_clip_error", "latency_ms"):
            if key in paired:
                p = paired[key]
                prow.append(
                    [
                        f"{key} (Wilcoxon; bootstrap CI of mean difference)",
                        f"{_fmt(p['mean_difference'])} [{_fmt(p['ci'][0])}, {_fmt(p['ci'][1])}]",
                        _fmt(p["wilcoxon_p_value"]),
                    ]
                )
        tables.append(
            (f"Paired tests: {comp['model']} - {comp['baseline']}", ["test", "effect", "p"], prow)
        )
    return tables


def _verdicts(report: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    return [
        (c["model"], c["recommendation"]["verdict"], c["recommendation"]["reasons"])
        for c in report["comparisons"]
    ]


def render_markdown(report: dict[str, Any]) -> str:
    out = [
        f"# Offline comparison: {report['task']}",
        "",
        f"Dataset `{report['dataset']['manifest']}`: {report['dataset']['clips']} clips; "
        f"baseline **{report['baseline']}**.",
        "",
    ]
    for model, verdict, reasons in _verdicts(report):
        out.append(f"**{model}: {verdict}**")
        out += [f"- {r}" for r in reasons]
        out.append("")
    for title, header, rows in _tables(report):
        out += [f"## {title}", "", "| " + " | ".join(header) + " |"]
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        out.append("")
    return "\n".join(out)


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def plots(report: dict[str, Any], columns: dict[str, Columns]) -> list[tuple[str, str]]:
    """(title, inline SVG) for the latency distributions, per-class accuracy and errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "path"  # glyphs as paths: no font needed to view
    figures = []
    checked = [(c["model"], r) for c in report["comparisons"] for r in c["criteria"]
               if r["status"] != "not_applicable"]  # fmt: skip
    if checked:
        figures.append(("Criteria: each worsening's interval against its bound",
                        _criteria_plot(plt, checked, report["alpha"])))  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, cols in columns.items():
        values = np.sort(cols.latency_ms[~np.isnan(cols.latency_ms)])
        if values.size:
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=name)
    ax.set_xlabel("client latency (ms)")
    ax.set_ylabel("share of clips at or below")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    figures.append(("Latency distribution (CDF)", _svg(fig)))
    plt.close(fig)

    classes = report["dataset"]["classes"]
    if classes:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / max(len(columns), 1)
        for i, name in enumerate(columns):
            per_class = report["models"][name]["per_class_accuracy"]
            ax.bar(
                np.arange(len(classes)) + i * width,
                [per_class.get(c, 0.0) for c in classes],
                width,
                label=name,
            )
        ax.set_xticks(np.arange(len(classes)) + width * (len(columns) - 1) / 2, classes)
        ax.set_ylabel("correct")
        ax.set_ylim(0, 1)
        ax.legend()
        figures.append(("Per-class accuracy", _svg(fig)))
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    kinds: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for name, summary in report["models"].items():
        c = dict(summary["edit_kinds"])
        c.update({f"call {k}": v for k, v in summary["errors"].items()})
        c["wrong answers"] = sum(1 for ok in columns[name].correct if not ok)
        counts[name] = c
        kinds += [k for k in c if k not in kinds]
    width = 0.8 / max(len(counts), 1)
    for i, (name, c) in enumerate(counts.items()):
        ax.bar(np.arange(len(kinds)) + i * width, [c.get(k, 0) for k in kinds], width, label=name)
    ax.set_xticks(np.arange(len(kinds)) + width * (len(counts) - 1) / 2, kinds)
    ax.set_ylabel("count")
    ax.legend()
    figures.append(("Error breakdown", _svg(fig)))
    plt.close(fig)
    return figures


STATUS_COLOURS = {"met": "#176f2c", "violated": "#a11", "inconclusive": "#975a00"}


def _criteria_plot(plt: Any, checked: list[tuple[str, dict[str, Any]]], alpha: float) -> str:
    """What the verdict rests on: per model and criterion, the worsening against the baseline
    with its paired bootstrap interval, and the bound it must stay within (a row each: their
    scales differ). Met when the whole interval is left of the bound."""
    fig, axes = plt.subplots(len(checked), 1, figsize=(7, 0.9 * len(checked) + 0.6),
                             squeeze=False)  # fmt: skip
    for ax, (model, r) in zip(axes[:, 0], checked, strict=True):
        lo, hi = (math.nan if v is None else v for v in r["ci"])
        colour = STATUS_COLOURS[r["status"]]
        ax.plot([lo, hi], [0, 0], color=colour, linewidth=4, solid_capstyle="butt")
        if r["worsening"] is not None:
            ax.plot([r["worsening"]], [0], "o", color=colour)
        ax.axvline(r["bound"], color="#444", linestyle="--")
        ax.axvline(0, color="#bbb", linewidth=0.8)
        ax.set_yticks([0], [f"{model}: {r['metric']} ({r['kind']}) {r['status']}"])
        ax.set_ylim(-1, 1)
    axes[-1, 0].set_xlabel(f"worsening against the baseline, {100 * (1 - alpha):g}% paired "
                           "bootstrap interval (dashed: the bound)")  # fmt: skip
    fig.tight_layout()
    svg = _svg(fig)
    plt.close(fig)
    return svg


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.3rem .6rem}
th{background:#f3f3f3}.ADOPT{color:#176f2c}.KEEP_BASELINE{color:#a11}.INCONCLUSIVE{color:#975a00}
figure{margin:1rem 0}svg{max-width:100%;height:auto}
"""


def render_html(report: dict[str, Any], columns: dict[str, Columns]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Offline comparison: {e(report['task'])}</title><style>{_STYLE}</style></head>",
        f"<body><h1>Offline comparison: {e(report['task'])}</h1>",
        f"<p>Dataset <code>{e(report['dataset']['manifest'])}</code>: "
        f"{report['dataset']['clips']} clips; baseline <b>{e(report['baseline'])}</b>.</p>",
    ]
    for model, verdict, reasons in _verdicts(report):
        parts.append(f"<h2>{e(model)}: <span class='{verdict}'>{verdict}</span></h2><ul>")
        parts += [f"<li>{e(r)}</li>" for r in reasons]
        parts.append("</ul>")
    for title, header, rows in _tables(report):
        parts.append(f"<h2>{e(title)}</h2><table><tr>")
        parts += [f"<th>{e(h)}</th>" for h in header]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>")
        parts.append("</table>")
    for title, svg in plots(report, columns):
        parts.append(f"<figure><figcaption><h2>{e(title)}</h2></figcaption>{svg}</figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
