"""`router rollout`: run the controller, or change one phase by hand."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys

from gamaserving.grpcutil import stop_event
from gamaserving.telemetry import Telemetry
from router.api.auth import AdminTokenError, load_token
from router.config import ConfigError, RouterConfig, load_config
from router.fleet import find_experiment
from router.rollout.controller import ControllerMetrics, RolloutController, manual
from router.rollout.sources import PrometheusSource, RoutersSource, StatsSource
from router.rollout.state import StateError
from router.rollout.store import ConfigMapStore, FileStore, StateStore, state_path

log = logging.getLogger(__name__)


def _fail(message: str, code: int = 2) -> int:
    print(f"router rollout: {message}", file=sys.stderr)
    return code


def _store(args: argparse.Namespace, config: RouterConfig) -> StateStore:
    if args.configmap:
        namespace, _, name = args.configmap.rpartition("/")
        return ConfigMapStore(name, namespace or "default")
    if config.rollout.state_file is None:
        raise ConfigError(f"{args.config}: rollout.state_file is not set (or pass --configmap)")
    return FileStore(state_path(config.rollout.state_file, args.config))


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
        d = manual(store, experiment, action, getpass.getuser(), coverage, args.reason)
    except StateError as exc:
        return _fail(str(exc), 3)
    print(
        f"{d.experiment} (seed {d.seed}): {d.action}, coverage {d.from_coverage:g} -> "
        f"{d.to_coverage:g}, written to {store.describe()}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        store = _store(args, config)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.pause or args.resume or args.set:
        return _by_hand(args, config, store)
    source: StatsSource
    if args.prometheus:
        source = PrometheusSource(args.prometheus)
    elif args.router:
        try:
            token = load_token(args.admin_token_file)
        except AdminTokenError as exc:
            return _fail(str(exc).replace("server.admin_token_file", "--admin-token-file"))
        source = RoutersSource(args.router, token)
    else:
        return _fail("name the fleet's statistics: --prometheus URL or --router HOST:PORT ...")

    async def main() -> int:
        telemetry = None
        controller = RolloutController(args.config, source, store)
        if args.metrics_port is not None:
            telemetry = Telemetry("rollout-controller")
            controller.metrics = ControllerMetrics(telemetry, lambda: controller.state)
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
            if isinstance(source, RoutersSource):
                await source.close()
            if telemetry is not None:
                telemetry.shutdown()

    return asyncio.run(main())
