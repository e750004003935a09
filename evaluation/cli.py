"""`evaluation`: the offline, paired comparison of models on a labelled dataset, and the
synthetic demo dataset. A batch tool beside the router, not part of the request path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gamaserving.logs import setup_logging
from gamaserving.terminal import add_standard_options, checked_log_level


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluation", description=__doc__)
    add_standard_options(parser, "EVALUATION_LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", required=True)
    dataset = sub.add_parser("make-dataset", help="synthesise a small labelled demo dataset")
    dataset.add_argument(
        "--out", type=Path, required=True, help="directory for the clips and manifest.jsonl"
    )
    dataset.add_argument("--per-class", type=int, default=12, help="clips per class (default: 12)")
    dataset.add_argument(
        "--seed", type=int, default=0, help="random seed: the same seed, the same clips"
    )
    dataset.add_argument(
        "--speech",
        choices=("auto", "yes", "no"),
        default="auto",
        help="spoken sentences via espeak-ng: auto adds them when it is installed",
    )
    cmp = sub.add_parser("compare", help="compare models offline on a labelled dataset")
    cmp.add_argument("--dataset", type=Path, required=True, help="manifest.jsonl")
    cmp.add_argument("--models", required=True, help="comma-separated, e.g. gama,wav2vec2")
    cmp.add_argument(
        "--task",
        required=True,
        choices=("transcribe", "tag", "embed", "describe"),
        help="what both models are asked to do with each clip",
    )
    cmp.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory for report.json, report.md, report.html and the answers (resumable)",
    )
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
    cmp.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is off anyway when stderr is not a terminal)",
    )
    return parser


def _make_dataset(args: argparse.Namespace) -> int:
    from evaluation.dataset import make_dataset

    speech = {"auto": None, "yes": True, "no": False}[args.speech]
    try:
        summary = make_dataset(args.out, args.per_class, args.seed, speech)
    except FileNotFoundError as exc:
        print(f"evaluation: {exc}", file=sys.stderr)
        return 2
    extra = "" if summary.speech else " (no speech: espeak-ng is not installed)"
    print(f"wrote {summary.clips} clips and {summary.manifest}{extra}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from evaluation.compare import CompareOptions, compare
    from evaluation.criteria import CriteriaError
    from evaluation.manifest import ManifestError, load_manifest
    from evaluation.report import IncompleteRunError
    from evaluation.runner import CompareError
    from evaluation.store import RunMismatchError
    from router.config import ConfigError, load_config

    try:
        endpoints = dict(e.split("=", 1) for e in args.endpoint)
    except ValueError:
        print("evaluation: --endpoint: expected NAME=HOST:PORT", file=sys.stderr)
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
        print(f"evaluation: {exc}", file=sys.stderr)
        return 2
    if len(set(models)) != len(models) or not models:
        print(
            f"evaluation: --models: give distinct model names, got {args.models!r}", file=sys.stderr
        )
        return 2
    try:
        report = compare(options)
    except CriteriaError as exc:
        print(f"evaluation: {exc}", file=sys.stderr)
        return 2
    except (CompareError, RunMismatchError, IncompleteRunError) as exc:
        print(f"evaluation: {exc}", file=sys.stderr)
        return 3
    for comp in report["comparisons"]:
        rec = comp["recommendation"]
        print(f"{comp['model']} against {comp['baseline']}: {rec['verdict']}")
        for reason in rec["reasons"]:
            print(f"  - {reason}")
    print(f"wrote {args.out / 'report.json'}, report.md and report.html")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(checked_log_level(parser, args.log_level, "EVALUATION_LOG_LEVEL"))
    commands = {"make-dataset": _make_dataset, "compare": _compare}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
