"""`router compare`: run the comparison (resuming what a store already holds), then write
report.json, report.md and report.html."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.analysis import default_criteria
from evaluation.columns import evaluable
from evaluation.criteria import OfflineCriterion, parse_criteria
from evaluation.manifest import Manifest
from evaluation.render import render_html, render_markdown
from evaluation.report import build_report
from evaluation.runner import CompareError, Target, plan, run
from evaluation.store import ResultStore
from router.config import RouterConfig

STORE = "results.sqlite"


@dataclass(frozen=True)
class CompareOptions:
    manifest: Manifest
    models: list[str]
    task: str
    out: Path
    endpoints: dict[str, str]
    config: RouterConfig | None = None
    experiment: str | None = None
    baseline: str | None = None
    concurrency: int = 1
    timeout: float = 60.0
    fresh: bool = False
    progress: bool = True


def targets(options: CompareOptions) -> list[Target]:
    out = []
    for name in options.models:
        if name in options.endpoints:
            out.append(Target(name, options.endpoints[name], name))
            continue
        settings = options.config.models.get(name) if options.config else None
        if settings is None:
            raise CompareError(
                f"--models: no address for {name!r}; pass --endpoint {name}=HOST:PORT or a "
                "--config that lists it"
            )
        out.append(Target(name, settings.endpoints[0], settings.model_name or name))
    return out


def criteria_and_baseline(options: CompareOptions) -> tuple[list[OfflineCriterion], str]:
    """From the route's experiment when the configuration has one: its `offline` criteria and
    its control arm's model as the baseline. Otherwise the defaults and the last model."""
    experiment = None
    if options.config is not None:
        route = options.config.routes.get(options.task)  # type: ignore[call-overload]
        candidates = [r.experiment for r in options.config.routes.values() if r.experiment]
        if options.experiment:
            experiment = next((e for e in candidates if e.name == options.experiment), None)
            if experiment is None:
                raise CompareError(f"--experiment: no experiment {options.experiment!r}")
        elif route is not None:
            experiment = route.experiment
    baseline = options.baseline
    if baseline is None and experiment is not None:
        control = experiment.control or experiment.arms[0].name
        model = next(a.model for a in experiment.arms if a.name == control)
        baseline = model if model in options.models else None
    baseline = baseline or options.models[-1]
    if baseline not in options.models:
        raise CompareError(f"--baseline: {baseline!r} is not one of --models")
    criteria = parse_criteria(experiment.offline, experiment.name) if experiment else []
    return criteria or default_criteria(options.task), baseline


def compare(options: CompareOptions) -> dict[str, Any]:
    criteria, baseline = criteria_and_baseline(options)
    plans = asyncio.run(plan(targets(options), options.task))
    clips = [c for c in options.manifest.clips if evaluable(c, options.task)]
    if not clips:
        raise CompareError(f"no clip in the manifest has ground truth for {options.task}")
    subset = Manifest(options.manifest.path, clips)
    store = ResultStore(options.out / STORE)
    try:
        store.bind(
            {
                "manifest": options.manifest.fingerprint(),
                "task": options.task,
                "models": json.dumps(
                    [
                        {
                            "name": p.target.name,
                            "version": p.version,
                            "sent_task": p.task,
                            "device": p.device,
                        }
                        for p in plans
                    ]
                ),
            },
            fresh=options.fresh,
        )
        total = len(clips) * len(plans)
        already = len(store.done())
        from tqdm import tqdm

        with tqdm(
            total=total,
            initial=already,
            unit="call",
            desc=f"compare {options.task}",
            disable=None if options.progress else True,  # None: off when not a terminal
            file=sys.stderr,
        ) as bar:
            asyncio.run(
                run(
                    subset,
                    plans,
                    options.task,
                    store,
                    options.concurrency,
                    options.timeout,
                    bar.update,
                )
            )
        report, columns = build_report(options.manifest, store, baseline, criteria)
    finally:
        store.close()
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (options.out / "report.md").write_text(render_markdown(report))
    (options.out / "report.html").write_text(render_html(report, columns))
    return report
