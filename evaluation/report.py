"""Assembles report.json's content from the stored results: the same rows give the same report,
whether the run was interrupted or not."""

from __future__ import annotations

import json
from typing import Any

from evaluation.analysis import check_criterion, model_summary, paired_tests, recommend
from evaluation.columns import Columns, build_columns, evaluable
from evaluation.criteria import OfflineCriterion
from evaluation.manifest import Manifest
from evaluation.store import ResultStore


class IncompleteRunError(Exception):
    pass


def build_report(
    manifest: Manifest,
    store: ResultStore,
    baseline: str,
    criteria: list[OfflineCriterion],
    alpha: float = 0.05,
) -> tuple[dict[str, Any], dict[str, Columns]]:
    """The report, and each model's per-clip columns (for the plots)."""
    identity = store.identity()
    task = identity["task"]
    models: list[dict[str, str]] = json.loads(identity["models"])
    clips = [c for c in manifest.clips if evaluable(c, task)]
    by_model: dict[str, dict[str, Any]] = {m["name"]: {} for m in models}
    for result in store.results():
        if result.model in by_model:
            by_model[result.model][result.clip_id] = result
    columns: dict[str, Columns] = {}
    for name, results in by_model.items():
        missing = [c.id for c in clips if c.id not in results]
        if missing:
            raise IncompleteRunError(
                f"model {name} has no result for {len(missing)} clips (first: {missing[0]}); "
                "run `router compare` again to finish"
            )
        columns[name] = build_columns(task, clips, results)
    memory = store.memory()
    summaries = {}
    for m in models:
        summary = model_summary(columns[m["name"]])
        usage = memory.get(m["name"])
        summary["memory"] = {
            "rss_bytes": usage.rss_bytes if usage else None,
            "peak_rss_bytes": usage.peak_rss_bytes if usage else None,
            "gpu_bytes": usage.gpu_bytes if usage else None,
        }
        summaries[m["name"]] = {**m, **summary}
    comparisons = []
    for m in models:
        name = m["name"]
        if name == baseline:
            continue
        rows = [
            row
            for criterion in criteria
            for row in check_criterion(criterion, columns[name], columns[baseline], alpha)
        ]
        comparisons.append(
            {
                "model": name,
                "baseline": baseline,
                "paired": paired_tests(columns[name], columns[baseline], alpha),
                "criteria": rows,
                "recommendation": recommend(name, baseline, rows, alpha),
            }
        )
    report = {
        "dataset": {
            "manifest": str(manifest.path),
            "fingerprint": manifest.fingerprint(),
            "clips": len(clips),
            "classes": sorted({label for c in clips for label in c.labels}),
        },
        "task": task,
        "baseline": baseline,
        "alpha": alpha,
        "criteria": [c.model_dump(exclude_none=True) for c in criteria],
        "models": summaries,
        "comparisons": comparisons,
    }
    return report, columns
