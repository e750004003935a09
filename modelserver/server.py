"""The model server process: gRPC up first (probes answer while loading), then load, warm up,
serve, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gamaserving.grpcutil import aio_server, start_health_port, stop_event
from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.telemetry import Telemetry, otlp_wanted
from gamaserving.telemetry.tracing import Tracing
from gamaserving.tls import listen
from modelserver.config import ModelConfig, ServerSettings
from modelserver.core import UNMEASURED, InferenceCore
from modelserver.health import HealthReporter
from modelserver.lifecycle import Lifecycle, ModelState
from modelserver.metrics import ModelServerMetrics, observe_workers
from modelserver.oip.servicer import InferenceServicer

log = logging.getLogger(__name__)


class ModelServer:
    """Constructed whole (observers in the constructors); `start` opens every resource on one
    exit stack, so whatever started is closed again when a later step fails, and by `drain`."""

    def __init__(self, settings: ServerSettings, config: ModelConfig) -> None:
        self.settings = settings
        if settings.dtype is not None:  # `modelserver serve --dtype`
            config = config.model_copy(update={"dtype": settings.dtype})
        self.config = config
        self.tracing = Tracing("modelserver")
        self.telemetry = Telemetry("modelserver")
        # Recorded when they go somewhere: a metrics port or OTLP (recording costs serving).
        self._measured = settings.metrics_port is not None or otlp_wanted()
        self.lifecycle = Lifecycle(config.name, settings.fault_threshold, [self._state_changed])
        self.core = InferenceCore(
            config,
            self.lifecycle,
            ModelServerMetrics(self.telemetry, config.name) if self._measured else UNMEASURED,
            self.tracing.tracer,
        )
        observe_workers(self.telemetry, self.core)
        self.health = HealthReporter(self.core, settings.stuck_after_seconds)
        self.port = 0
        self.health_port = 0
        self._stack = contextlib.AsyncExitStack()
        self._recovery: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None

    def _servicers(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.core), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        reflection.enable_server_reflection(
            (
                pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )

    def _state_changed(self, state: ModelState) -> None:
        self._refresh = asyncio.get_running_loop().create_task(self.health.refresh())

    async def start(self) -> int:
        """Listen (NOT_SERVING until warm); on any failure everything started is closed."""
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.tracing.shutdown)
            stack.callback(self.telemetry.shutdown)
            stack.push_async_callback(self.core.close)
            # grpc.aio objects bind to the running loop: build them inside it.
            server = aio_server(
                self.settings.max_message_bytes,
                self.tracing.tracer if self.tracing.enabled else None,
                self.telemetry if self._measured else None,
            )
            self._servicers(server)
            address = f"{self.settings.host}:{self.settings.port}"
            self.port = listen(server, address, self.settings.tls)
            if self.port == 0:
                raise OSError(f"cannot listen on {address}")
            await server.start()
            stack.push_async_callback(server.stop, 0.5)
            await self.health.start()
            stack.push_async_callback(self.health.stop)
            if self.settings.health_port is not None:
                health_server, self.health_port = await start_health_port(
                    self.health.servicer, self.settings.host, self.settings.health_port
                )
                stack.push_async_callback(health_server.stop, 0.5)
            if self.settings.metrics_port is not None:
                self.telemetry.serve(self.settings.host, self.settings.metrics_port)
            self._stack = stack.pop_all()
        log.info("listening on %s:%d (NOT_SERVING until warm)", self.settings.host, self.port)
        return self.port

    async def load(self) -> None:
        started = time.perf_counter()
        s = self.settings
        await self.core.load(s.model_dir, s.device, s.device_memory, s.emulated_bfloat16)
        assert self.core.family is not None
        p = self.core.family.placement
        log.info(
            "loaded %s v%s (%s) runtime=%s device=%s provider=%s dtype=%s in %.2fs",
            self.config.name,
            self.config.version,
            self.config.family,
            p.runtime,
            p.device,
            p.provider,
            p.dtype,
            time.perf_counter() - started,
        )
        started = time.perf_counter()
        await self.core.warm_up()
        log.info("warm-up done in %.2fs", time.perf_counter() - started)
        # The model and everything loaded so far live as long as the process: out of the
        # collector's reach, full collections under load no longer walk them.
        gc.freeze()
        self.lifecycle.set_state(ModelState.READY)
        self._recovery = asyncio.get_running_loop().create_task(self._recover(), name="self-test")

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self.settings.self_test_seconds)
            if self.lifecycle.state is ModelState.FAULTED:
                await self.core.self_test()

    async def drain(self) -> None:
        """NOT_SERVING at once; after the drain delay refuse new work; let in-flight calls
        finish within the grace; then close open streams (health Watch) and stop."""
        log.info("draining: NOT_SERVING, grace %.1fs", self.settings.grace_seconds)
        if self._recovery is not None:
            self._recovery.cancel()
        # Readiness only: liveness stays SERVING so the pod is not restarted mid-drain.
        await self.health.mark_draining()
        if self.settings.drain_delay_seconds:
            # Load balancers still send work until they see NOT_SERVING: keep serving it.
            await asyncio.sleep(self.settings.drain_delay_seconds)
        self.core.drain()
        try:
            async with asyncio.timeout(self.settings.grace_seconds):
                await self.core.wait_idle()
        except TimeoutError:
            log.warning("grace period over with %d requests in flight", self.core.in_flight)
        await self._stack.aclose()
        log.info("stopped")

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain."""
        stop = stop_event()
        loop = asyncio.get_running_loop()
        await self.start()
        loading = loop.create_task(self.load())
        waiter = loop.create_task(stop.wait())
        done, _ = await asyncio.wait({loading, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if loading in done:
            if loading.exception() is not None:
                # Refused or failed before serving (a memory plan that does not fit): stop
                # listening cleanly, so the process ends with the reason, not gRPC warnings.
                waiter.cancel()
                await self._stack.aclose()
            loading.result()
            await waiter
        else:
            loading.cancel()
        await self.drain()
