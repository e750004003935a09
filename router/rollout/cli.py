"""`router rollout`: run the controller, or change one phase by hand."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2

from gamaserving.grpcutil import start_health_port, stop_event
from gamaserving.telemetry import Telemetry
from router.config import ConfigError, RouterConfig, find_experiment, load_config
from router.results.cli import store_url
from router.results.store import ResultsStore, StoreError
from router.rollout.controller import ControllerMetrics, RolloutController, Round, manual
from router.rollout.sources import StoreSource
from router.rollout.state import StateError
from router.rollout.store import ConfigMapStore, FileStore, StateStore

log = logging.getLogger(__name__)

RoundHook = Callable[[Round], Awaitable[None]]
SERVING = health_pb2.HealthCheckResponse.SERVING


def _fail(message: str, code: int = 2) -> int:
    print(f"router rollout: {message}", file=sys.stderr)
    return code


def _store(args: argparse.Namespace, config: RouterConfig) -> StateStore:
    if args.configmap:
        namespace, _, name = args.configmap.rpartition("/")
        return ConfigMapStore(name, namespace or "default")
    if config.rollout.state_file is None:
        raise ConfigError(f"{args.config}: rollout.state_file is not set (or pass --configmap)")
    return FileStore(config.rollout.state_file)


def _by_hand(args: argparse.Namespace, config: RouterConfig, store: StateStore) -> int:
    if args.set:
        name, _, value = args.set.partition("=")
        try:
            coverage = float(value)
        except ValueError:
            return _fail(f"--set {args.set}: expected EXPERIMENT=COVERAGE, e.g. gama-ab=0.25")
        if not 0 <= coverage <= 1:
            return _fail(f"--set {args.set}: coverage must be within [0, 1]")
        action = "override"
    else:
        name, coverage = args.pause or args.resume, None
        action = "pause" if args.pause else "resume"
    experiment = find_experiment(config.routes, name)
    if experiment is None:
        return _fail(f"no experiment {name!r} in {args.config}")
    try:
        d = manual(
            store,
            experiment,
            action,
            getpass.getuser(),
            coverage,
            args.reason,
            resume_rolled_back=args.resume_rolled_back,
        )
    except StateError as exc:
        return _fail(str(exc), 3)
    what = (
        f"rolled back by hand by {d.by}"
        if action == "override" and d.to_coverage == 0
        else d.action
    )
    if args.resume_rolled_back and d.from_coverage == 0 and d.to_coverage > 0:
        print(
            f"router rollout: warning: {d.experiment} (seed {d.seed}) was rolled back and is "
            "serving again in the same phase; its results mix users from before and after",
            file=sys.stderr,
        )
    print(
        f"{d.experiment} (seed {d.seed}): {what}, coverage {d.from_coverage:g} -> "
        f"{d.to_coverage:g}, written to {store.describe()}"
    )
    return 0


async def _health(port: int | None) -> tuple[grpc.aio.Server | None, RoundHook]:
    """Liveness while the process runs; readiness while its rounds succeed (the hook the
    controller calls after each round)."""
    servicer = health.aio.HealthServicer()
    for name in ("", "liveness"):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("readiness", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def judged(result: Round) -> None:
        ok = health_pb2.HealthCheckResponse.NOT_SERVING if result.errors else SERVING
        await servicer.set("readiness", ok)

    if port is None:
        return None, judged
    server, _ = await start_health_port(servicer, "0.0.0.0", port)
    return server, judged


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        store = _store(args, config)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.pause or args.resume or args.set:
        return _by_hand(args, config, store)
    try:
        results = ResultsStore(store_url(args.results, config), args.config.parent.resolve())
    except (ConfigError, StoreError, ValueError) as exc:
        return _fail(str(exc))

    async def main() -> int:
        source = StoreSource(results)
        telemetry = Telemetry("rollout-controller")
        health_server, judged = await _health(args.health_port)
        controller = RolloutController(
            args.config, source, store, metrics=ControllerMetrics(telemetry), on_round=judged
        )
        if args.metrics_port is not None:
            port = telemetry.serve("0.0.0.0", args.metrics_port)
            log.info("rollout controller metrics on :%d", port)
        log.info(
            "rollout controller: statistics from %s, state in %s",
            source.describe(),
            store.describe(),
        )
        try:
            if args.once:
                result = await controller.evaluate()
                return 3 if result.errors else 0
            await controller.run(stop_event())
            return 0
        finally:
            results.close()
            telemetry.shutdown()
            if health_server is not None:
                await health_server.stop(0.5)

    return asyncio.run(main())
