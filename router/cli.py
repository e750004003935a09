"""`router`: the stateless gRPC front door."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from gamaserving.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("ROUTER_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve AudioRouter and RouterAdmin over gRPC")
    serve.add_argument("--config", type=Path, required=True)
    serve.add_argument("--port", type=int, default=None, help="overrides server.port")
    serve.add_argument("--host", default=None, help="overrides server.host")
    serve.add_argument(
        "--metadata-wait",
        type=float,
        default=5.0,
        help="seconds to wait for each model's metadata at start and reload",
    )
    fleet = sub.add_parser("report", help="experiment report for a fleet, from Prometheus")
    fleet.add_argument(
        "--prometheus", required=True, help="Prometheus base URL, e.g. http://prometheus:9090"
    )
    fleet.add_argument("--experiment", required=True)
    fleet.add_argument(
        "--config", type=Path, required=True, help="the routers' configuration (arms, criteria)"
    )
    dataset = sub.add_parser("make-dataset", help="synthesise a small labelled demo dataset")
    dataset.add_argument("--out", type=Path, required=True)
    dataset.add_argument("--per-class", type=int, default=12)
    dataset.add_argument("--seed", type=int, default=0)
    dataset.add_argument(
        "--speech",
        choices=("auto", "yes", "no"),
        default="auto",
        help="spoken sentences via espeak-ng: auto adds them when it is installed",
    )
    cmp = sub.add_parser("compare", help="compare models offline on a labelled dataset")
    cmp.add_argument("--dataset", type=Path, required=True, help="manifest.jsonl")
    cmp.add_argument("--models", required=True, help="comma-separated, e.g. gama,wav2vec2")
    cmp.add_argument("--task", required=True, choices=("transcribe", "tag", "embed", "describe"))
    cmp.add_argument("--out", type=Path, required=True)
    cmp.add_argument(
        "--config", type=Path, help="router configuration: model addresses and criteria"
    )
    cmp.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="a model's address (overrides --config)",
    )
    cmp.add_argument("--experiment", help="experiment whose `offline` criteria apply")
    cmp.add_argument("--baseline", help="model the others are judged against")
    cmp.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="clips in flight; above 1 the latencies include queueing inside the servers",
    )
    cmp.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    cmp.add_argument("--fresh", action="store_true", help="discard results from an earlier run")
    cmp.add_argument("--no-progress", action="store_true")
    return parser


def _make_dataset(args: argparse.Namespace) -> int:
    from router.offline.dataset import make_dataset

    speech = {"auto": None, "yes": True, "no": False}[args.speech]
    try:
        summary = make_dataset(args.out, args.per_class, args.seed, speech)
    except FileNotFoundError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    extra = "" if summary.speech else " (no speech: espeak-ng is not installed)"
    print(f"wrote {summary.clips} clips and {summary.manifest}{extra}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from router.config import ConfigError, load_config
    from router.offline.compare import CompareOptions, compare
    from router.offline.manifest import ManifestError, load_manifest
    from router.offline.report import IncompleteRunError
    from router.offline.runner import CompareError
    from router.offline.store import RunMismatchError

    try:
        endpoints = dict(e.split("=", 1) for e in args.endpoint)
    except ValueError:
        print("router: --endpoint: expected NAME=HOST:PORT", file=sys.stderr)
        return 2
    models = [m for m in args.models.split(",") if m]
    try:
        options = CompareOptions(
            manifest=load_manifest(args.dataset),
            models=models,
            task=args.task,
            out=args.out,
            endpoints=endpoints,
            config=load_config(args.config) if args.config else None,
            experiment=args.experiment,
            baseline=args.baseline,
            concurrency=args.concurrency,
            timeout=args.timeout,
            fresh=args.fresh,
            progress=not args.no_progress,
        )
    except (ConfigError, ManifestError) as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    if len(set(models)) != len(models) or not models:
        print(f"router: --models: give distinct model names, got {args.models!r}", file=sys.stderr)
        return 2
    try:
        report = compare(options)
    except (CompareError, RunMismatchError, IncompleteRunError) as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 3
    for comp in report["comparisons"]:
        rec = comp["recommendation"]
        print(f"{comp['model']} against {comp['baseline']}: {rec['verdict']}")
        for reason in rec["reasons"]:
            print(f"  - {reason}")
    print(f"wrote {args.out / 'report.json'}, report.md and report.html")
    return 0


def _report(args: argparse.Namespace) -> int:
    import json

    from router.config import ConfigError, load_config
    from router.experiments.results import report
    from router.fleet import FleetError, as_json, find_experiment, fleet_arms

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    settings = find_experiment(config.routes, args.experiment)
    if settings is None:
        print(f"router: no experiment {args.experiment!r} in {args.config}", file=sys.stderr)
        return 2
    try:
        arms = fleet_arms(args.prometheus, args.experiment)
    except FleetError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(as_json(report(settings, arms)), indent=2, default=float))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from router.server import RouterServer, StartupError

    async def main() -> None:
        await RouterServer(args.config, args.port, args.host, args.metadata_wait).run()

    try:
        asyncio.run(main())
    except StartupError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    commands = {
        "report": _report,
        "serve": _serve,
        "make-dataset": _make_dataset,
        "compare": _compare,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
