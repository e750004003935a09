"""`router`: the stateless gRPC front door."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gamaserving.logs import setup_logging
from gamaserving.terminal import add_standard_options, checked_log_level
from router.admin import cli as admin_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router", description=__doc__)
    add_standard_options(parser, "ROUTER_LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve AudioRouter and RouterAdmin over gRPC")
    serve.add_argument(
        "--config", type=Path, required=True, help="the router configuration (YAML; README)"
    )
    serve.add_argument("--port", type=int, default=None, help="overrides server.port")
    serve.add_argument("--host", default=None, help="overrides server.host")
    serve.add_argument(
        "--metadata-wait",
        type=float,
        default=5.0,
        help="seconds to wait for each model's metadata at start and reload",
    )
    fleet = sub.add_parser(
        "report",
        help="an experiment's report for the fleet, from the results store",
        description="The phase's report computed from the results store (every replica's "
        "exposures and the outcomes callers reported): verdict, comparisons, requests per arm "
        "and each metric's mean. Tables, or strict JSON with --json.",
    )
    fleet.add_argument(
        "--results",
        help="the results store URL (default: the configuration's results.url)",
    )
    fleet.add_argument("--experiment", required=True, help="the experiment's name")
    fleet.add_argument("--seed", default=None, help="an earlier phase (default: the current one)")
    fleet.add_argument(
        "--config",
        type=Path,
        help="the routers' configuration (arms, criteria); without it, counts and means only",
    )
    fleet.add_argument(
        "--json", action="store_true", help="strict JSON instead of tables (undefined: null)"
    )
    fleet.add_argument(
        "--html",
        type=Path,
        metavar="OUT",
        help="write the results page to OUT (one self-contained file, plots inline; needs "
        "--config)",
    )
    fleet.add_argument(
        "--segment",
        metavar="DIMENSION",
        help="also break the results down by one of the experiment's `dimensions` (needs "
        "--config): each segment's comparisons with corrected p-values",
    )
    fleet.add_argument(
        "--correction",
        choices=["holm", "bh"],
        default="holm",
        help="how --segment corrects p-values for the number of segments: holm (any false "
        "finding at most alpha; the default) or bh (Benjamini-Hochberg: the share of false "
        "findings, for exploring)",
    )
    results = sub.add_parser("results", help="manage the results store")
    results_sub = results.add_subparsers(dest="results_command", required=True)
    prune = results_sub.add_parser("prune", help="delete a finished phase's events")
    prune.add_argument("--results", required=True, help="the results store URL")
    prune.add_argument("--experiment", required=True, help="the experiment's name")
    prune.add_argument("--seed", default=None, help="one phase (default: every phase)")
    migrate = results_sub.add_parser(
        "migrate",
        help="upgrade a results store to this router's schema",
        description="Upgrade the store step by step to this router's schema version, in one "
        "transaction (a failed upgrade leaves it as it was), keeping every row. A router "
        "refuses a store at an older schema until this has run. Back the store up first.",
    )
    migrate.add_argument("--results", required=True, help="the results store URL")
    letters = results_sub.add_parser(
        "dead-letters",
        help="events the store refused on their own; --replay writes them again",
        description="Events the results store refused for what they held (a constraint, a "
        "value it cannot hold), kept in its results_dead_letters table so that they never held "
        "the rest back. List them; after fixing the cause, --replay writes them again and "
        "forgets those the store takes (exit 1 while some are still refused).",
    )
    letters.add_argument("--results", required=True, help="the results store URL")
    letters.add_argument("--replay", action="store_true", help="write them again")
    letters.add_argument("--json", action="store_true", help="the list as JSON")
    rollout = sub.add_parser(
        "rollout",
        help="the rollout controller: decide ramps and rollbacks once, for the fleet",
        description="Evaluate every experiment with `ramp` or `auto_rollback` from fleet-wide "
        "statistics and write the coverage in force to the rollout state; or, with --pause, "
        "--resume or --set, change one phase by hand and exit.",
    )
    rollout.add_argument("--config", type=Path, required=True, help="the routers' configuration")
    rollout.add_argument(
        "--results", help="the results store URL (default: the configuration's results.url)"
    )
    rollout.add_argument("--once", action="store_true", help="one evaluation round, then exit")
    rollout.add_argument(
        "--configmap",
        metavar="[NAMESPACE/]NAME",
        help="write the state to this ConfigMap through the Kubernetes API "
        "(default: the configuration's rollout.state_file)",
    )
    rollout.add_argument(
        "--metrics-port", type=int, default=None, help="serve the controller's /metrics here"
    )
    rollout.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="serve grpc.health.v1 here (liveness; readiness: the last round succeeded)",
    )
    by_hand = rollout.add_mutually_exclusive_group()
    by_hand.add_argument("--pause", metavar="EXPERIMENT", help="stop decisions for its phase")
    by_hand.add_argument("--resume", metavar="EXPERIMENT", help="let the controller decide again")
    by_hand.add_argument(
        "--set",
        metavar="EXPERIMENT=COVERAGE",
        help="override the coverage in force (the phase is paused until --resume)",
    )
    rollout.add_argument("--reason", default="", help="recorded with a manual action")
    rollout.add_argument(
        "--resume-rolled-back",
        action="store_true",
        help="with --set: let a rolled-back phase serve again (it otherwise stays at coverage "
        "0 until the seed changes)",
    )
    admin_cli.add_parser(sub)
    for moved in MOVED:
        sub.add_parser(moved, help=f"moved: `evaluation {moved}`")
    return parser


MOVED = ("make-dataset", "compare")


def _moved(command: str) -> int:
    print(
        f"router: `router {command}` moved to `evaluation {command}` "
        "(the offline evaluation is its own tool now; same arguments)",
        file=sys.stderr,
    )
    return 2


def _report(args: argparse.Namespace) -> int:
    from router.results.cli import report_command

    return report_command(args)


def _results(args: argparse.Namespace) -> int:
    from router.results.cli import dead_letters_command, migrate_command, prune_command

    commands = {
        "dead-letters": dead_letters_command,
        "migrate": migrate_command,
        "prune": prune_command,
    }
    return commands[args.results_command](args)


def _rollout(args: argparse.Namespace) -> int:
    from router.rollout.cli import run

    return run(args)


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
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if words and words[0] in MOVED:
        return _moved(words[0])
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(checked_log_level(parser, args.log_level, "ROUTER_LOG_LEVEL"))
    commands = {
        "admin": admin_cli.run,
        "report": _report,
        "results": _results,
        "rollout": _rollout,
        "serve": _serve,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
