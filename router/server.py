"""The router process: load and validate the configuration, serve, reload on SIGHUP or file
change, follow backend health for readiness, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gamaserving.grpcutil import aio_server, start_health_port, stop_event
from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from gamaserving.telemetry import Telemetry, otlp_wanted
from gamaserving.telemetry.tracing import Tracing
from gamaserving.tls import TlsError, listen
from router.alerts.service import AlertService
from router.alerts.signals import Signals
from router.api.auth import (
    TOKEN_ENV,
    AdminAuthInterceptor,
    AdminTokenError,
    is_loopback,
    load_token,
)
from router.api.servicers import Admission, AudioRouterServicer, RouterAdminServicer
from router.backends.model import ModelBackend
from router.config import ConfigError, RouterConfig, load_config
from router.core import RouterCore
from router.metrics import RouterMetrics, Unmeasured, observe_router
from router.results.service import ExperimentResults
from router.results.store import ResultsStore, SchemaError, StoreError
from router.results.writer import ResultsWriter
from router.rollout.state import StateError, parse_state
from router.rollout.store import FileStore

log = logging.getLogger(__name__)

LIVENESS = ("", "liveness")
READINESS = ("readiness", "gamaserving.router.v1.AudioRouter")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StartupError(Exception):
    """The configuration cannot be served; the message names each problem's field."""


class RouterServer:
    """The process around a RouterCore. `start` opens every resource on one exit stack, so a
    start that fails at any step closes whatever it had started (channels, tasks, threads,
    ports), and `drain` closes them in reverse."""

    def __init__(
        self,
        config_path: Path,
        port: int | None = None,
        host: str | None = None,
        metadata_wait: float = 5.0,
    ) -> None:
        self.config_path = config_path
        self.port_override = port
        self.host_override = host
        self.metadata_wait = metadata_wait
        self.telemetry = Telemetry("router")
        self.metrics: RouterMetrics = Unmeasured()
        """Recorded when they go somewhere (`start` decides: a Prometheus port or OTLP)."""
        self.tracing = Tracing("router")
        self.health = health.aio.HealthServicer()
        self.core: RouterCore
        """Built by `start`: whether it has a results store is the configuration's to say."""
        self.admission: Admission
        self.alerts: AlertService | None = None
        self.port = 0
        self.health_port = 0
        self.metrics_port = 0
        self.reloads = 0
        self.reload_failures = 0
        self._digest = ""
        self._rollout_digest = ""
        self._ready: bool | None = None
        self._draining = False
        self._readiness_changed = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    async def _load(self, config: RouterConfig) -> list[str]:
        """Build backends for `config`, check tasks against ModelMetadata, swap if clean."""
        for name, model in config.models.items():
            if model.tls is not None:
                try:
                    model.tls.credentials()
                except TlsError as exc:
                    return [f"models.{name}.tls: {exc}"]
        backends = self.core.build(config)
        errors = await self.core.validate_tasks(config, backends, self.metadata_wait)
        if errors:
            current = self.core.state.backends.values() if self.core.state else []
            for backend in set(backends.values()) - set(current):
                await backend.close()
            return errors
        retired = self.core.swap(config, backends)
        if retired:
            # Requests already dispatched to a retired backend may still be running.
            self._spawn(self._retire(retired), "retire")
        self._readiness_changed.set()
        return []

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._stack.callback(task.cancel)

    @staticmethod
    async def _retire(backends: list[ModelBackend], after: float = 30.0) -> None:
        await asyncio.sleep(after)
        for backend in backends:
            await backend.close()

    async def start(self) -> int:
        """Serve the configuration, or raise StartupError naming what is wrong, with nothing
        left running."""
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.tracing.shutdown)
            stack.callback(self.telemetry.shutdown)
            try:
                config = load_config(self.config_path)
            except ConfigError as exc:
                raise StartupError(str(exc)) from exc
            s = config.server
            host = self.host_override or s.host
            measured = config.telemetry.prometheus_port is not None or otlp_wanted()
            if measured:
                self.metrics = RouterMetrics(self.telemetry)
            token = _admin_token(s.admin_token_file, host)
            self.core = RouterCore(
                self.metrics,
                await self._open_results(config),
                self.tracing.tracer if self.tracing.enabled else None,
                on_readiness=self._readiness_changed.set,
            )
            stack.push_async_callback(self.core.close)
            self._digest = self._file_digest()
            errors = await self._load(config)
            if not errors and not self.apply_rollout():
                # No last good state to keep at start: serving the configured coverage instead
                # would move users between arms, so refuse to start (other replicas keep serving).
                errors = [f"rollout.state_file: {self.core.policy.state_error}"]
            if errors:
                raise StartupError(
                    f"{self.config_path}: invalid router configuration\n  " + "\n  ".join(errors)
                )
            self.admission = Admission(s.max_in_flight, self.metrics.shed)
            results = self.core.results
            observe_router(
                self.telemetry,
                self.core.circuits,
                lambda: self.admission.in_flight,
                lambda: results.writer.pending if results else 0,
            )
            server = self._grpc_server(s.max_message_bytes, token, measured)
            port = s.port if self.port_override is None else self.port_override
            try:
                self.port = listen(server, f"{host}:{port}", s.tls)
            except TlsError as exc:
                raise StartupError(f"server.tls: {exc}") from exc
            if self.port == 0:
                raise StartupError(
                    f"server.port: cannot listen on {host}:{port} (is another process using it?)"
                )
            await server.start()
            stack.push_async_callback(server.stop, 0.5)
            await self._open_ports(stack, config, host)
            if config.alerting.enabled:
                signals = Signals(
                    self.core, config.alerting.window_seconds, lambda: self.reload_failures
                )
                self.alerts = AlertService(config.alerting, signals.sample, port=self.port)
                self.alerts.start()
                stack.push_async_callback(self.alerts.stop)
                stack.push_async_callback(self.alerts.drain)
            self._stack = stack.pop_all()
        self._spawn(self._watch_rollout(), "rollout-watch")
        self._spawn(self._follow_backends(), "readiness")
        self._spawn(self._watch_file(s.reload_poll_seconds), "config-watch")
        # Everything loaded so far lives as long as the process: out of the collector's reach,
        # full collections under load no longer walk it (the imports alone are ~80,000
        # objects; CPython's own advice for long-running servers).
        gc.freeze()
        log.info("router listening on %s:%d", host, self.port)
        return self.port

    def _grpc_server(
        self, max_message_bytes: int, token: str | None, measured: bool
    ) -> grpc.aio.Server:
        server = aio_server(
            max_message_bytes,
            self.tracing.tracer if self.tracing.enabled else None,
            self.telemetry if measured else None,
            guards=[AdminAuthInterceptor(token)] if token is not None else None,
        )
        rpb_grpc.add_AudioRouterServicer_to_server(
            AudioRouterServicer(self.core, self.admission), server
        )
        rpb_grpc.add_RouterAdminServicer_to_server(
            RouterAdminServicer(self.core, lambda: self.alerts), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                rpb.DESCRIPTOR.services_by_name["AudioRouter"].full_name,
                rpb.DESCRIPTOR.services_by_name["RouterAdmin"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        return server

    async def _open_ports(
        self, stack: contextlib.AsyncExitStack, config: RouterConfig, host: str
    ) -> None:
        """The plaintext health port and /metrics, then liveness and readiness."""
        s, t = config.server, config.telemetry
        try:
            if s.health_port is not None:
                health_server, self.health_port = await start_health_port(
                    self.health, host, s.health_port
                )
                stack.push_async_callback(health_server.stop, 0.5)
            if t.prometheus_port is not None:
                self.metrics_port = self.telemetry.serve(t.prometheus_host, t.prometheus_port)
        except OSError as exc:
            raise StartupError(f"server.health_port or telemetry.prometheus_port: {exc}") from exc
        for name in LIVENESS:
            await self.health.set(name, SERVING)
        await self._publish_readiness()

    async def _open_results(self, config: RouterConfig) -> ExperimentResults | None:
        """The results store: created on first start; a store that is down only delays the
        writes (events wait in the buffer); a newer schema refuses the start."""
        settings = config.results
        if settings is None:
            return None
        try:
            store = ResultsStore(settings.resolved_url())
        except (StoreError, ValueError) as exc:
            raise StartupError(f"results: {exc}") from exc
        try:
            await asyncio.to_thread(store.create)
        except SchemaError as exc:
            store.close()
            raise StartupError(f"results: {exc}") from exc
        except StoreError as exc:
            log.error("results store unavailable at start; events wait for it: %s", exc)
        writer = ResultsWriter(
            store,
            settings.flush_ms / 1000,
            settings.max_buffer,
            self.metrics,
            settings.max_dead_letters,
        )
        writer.start()
        log.info("results store: %s", store.describe())
        return ExperimentResults(store, writer, metrics=self.metrics)

    async def _publish_readiness(self) -> None:
        ready = self.core.ready() and not self._draining
        if ready != self._ready:
            self._ready = ready
            log.info("router readiness: %s", "SERVING" if ready else "NOT_SERVING")
            for name in READINESS:
                await self.health.set(name, SERVING if ready else NOT_SERVING)

    async def _follow_backends(self) -> None:
        """Readiness follows the events that can change it (health, circuits, metadata,
        reloads), and wakes by itself only when an open circuit's wait ends."""
        while True:
            self._readiness_changed.clear()
            await self._publish_readiness()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.core.next_readiness_change()):
                    await self._readiness_changed.wait()

    def _rollout_store(self) -> FileStore | None:
        state = self.core.state
        configured = state.config.rollout.state_file if state else None
        return None if configured is None else FileStore(configured)

    def apply_rollout(self) -> bool:
        """Read the rollout state file and apply it; a bad one keeps the last good state."""
        store = self._rollout_store()
        if store is None:
            return True
        try:
            text = store.path.read_bytes()
        except FileNotFoundError:
            text = b""
        except OSError as exc:
            self.core.policy.reject(f"{store.path}: cannot read: {exc.strerror}")
            return False
        digest = hashlib.sha256(text).hexdigest()
        if digest == self._rollout_digest:
            return not self.core.policy.state_error
        try:
            state = parse_state(text.decode(errors="replace"), str(store.path))
        except StateError as exc:
            self.core.policy.reject(str(exc))
            return False
        self._rollout_digest = digest
        self.core.policy.apply(state)
        return True

    async def _watch_rollout(self) -> None:
        """The coverage in force follows the rollout state file, like the configuration."""
        while True:
            state = self.core.state
            await asyncio.sleep(state.config.rollout.poll_seconds if state else 1.0)
            self.apply_rollout()

    def _file_digest(self) -> str:
        try:
            return hashlib.sha256(self.config_path.read_bytes()).hexdigest()
        except OSError:
            return ""

    async def _watch_file(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            digest = self._file_digest()
            if digest and digest != self._digest:
                await self.reload()

    async def reload(self) -> bool:
        """Apply the file's configuration if valid; otherwise keep the current one and log why."""
        self._digest = self._file_digest()
        try:
            # A file with field errors gets its routes judged against the models served now,
            # so every problem shows in this one reload.
            config = load_config(self.config_path, self.core.declared_tasks())
            errors = await self._load(config)
        except ConfigError as exc:
            errors = exc.errors
        self.metrics.reload(not errors)
        if errors:
            self.reload_failures += 1
            log.error(
                "configuration reload rejected; keeping the current one (%s is not applied):\n  %s",
                self.config_path,
                "\n  ".join(errors),
                extra={"event": "reload_failed"},
            )
            return False
        self.reloads += 1
        self._rollout_digest = ""  # the state file may have moved with the configuration
        self.apply_rollout()
        log.info("configuration reloaded", extra={"event": "reload"})
        await self._publish_readiness()
        return True

    async def drain(self, grace: float | None = None) -> None:
        log.info("draining: readiness NOT_SERVING")
        self._draining = True
        await self._publish_readiness()
        state = self.core.state
        delay = state.config.server.drain_delay_seconds if state else 0.0
        if delay and grace is None:
            await asyncio.sleep(delay)
        self.admission.draining = True
        grace = grace if grace is not None else (state.config.server.grace_seconds if state else 0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.admission.idle.wait()
        await self._stack.aclose()
        log.info("stopped")

    async def run(self) -> None:
        stop = stop_event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        await self.start()
        await stop.wait()
        await self.drain()


def _admin_token(token_file: Path | None, host: str) -> str | None:
    try:
        token = load_token(token_file)
    except AdminTokenError as exc:
        raise StartupError(str(exc)) from exc
    if token is None and not is_loopback(host):
        raise StartupError(
            f"server.host {host} is reachable beyond loopback and RouterAdmin has no token: "
            f"set server.admin_token_file (or {TOKEN_ENV}), or listen on 127.0.0.1"
        )
    return token
