"""A model behind the router: its endpoints, its declared metadata and its retry budget."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

import grpc
from tenacity import AsyncRetrying, retry_if_exception_type

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.oip import ModelInfo, parse_metadata
from router.backends.endpoint import Endpoint
from router.backends.reconnect import reconnect_wait
from router.config import ModelSettings
from router.failover.budget import RetryBudget
from router.failover.circuit import State

log = logging.getLogger(__name__)


DISCOVER_FIRST_S, DISCOVER_MAX_S = 0.2, 5.0


class _NoAnswer(Exception):
    """No endpoint answered ModelMetadata."""


class ModelBackend:
    def __init__(
        self,
        key: str,
        settings: ModelSettings,
        max_message_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        on_circuit: Callable[[str, str, State, State], None] = lambda *change: None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_change` hears whatever can change whether this model can serve: an endpoint's
        health, and the model's metadata arriving (circuit changes come to `on_circuit`)."""
        self.key = key
        self._on_change = on_change
        self.settings = settings
        self.server_name = settings.model_name or key
        self.endpoints = [
            Endpoint(key, t, settings, max_message_bytes, clock, on_circuit, on_change)
            for t in settings.endpoints
        ]
        self.budget = RetryBudget(settings.retry_budget)
        self.info: ModelInfo | None = None
        self._rotation = itertools.count()
        self._discovery: asyncio.Task[None] | None = None

    def start(self) -> None:
        for endpoint in self.endpoints:
            endpoint.start()
        self._discovery = asyncio.get_running_loop().create_task(
            self._discover(), name=f"discover {self.key}"
        )

    async def _discover(self) -> None:
        """ModelMetadata from any endpoint, retried until one answers."""
        async for attempt in AsyncRetrying(
            wait=reconnect_wait(DISCOVER_FIRST_S, DISCOVER_MAX_S),
            retry=retry_if_exception_type(_NoAnswer),
        ):
            with attempt:
                self.info = await self._ask_metadata()
        assert self.info is not None
        self._on_change()
        log.info(
            "model %s: %s v%s does %s",
            self.key,
            self.info.name,
            self.info.version,
            sorted(self.info.tasks),
        )

    async def _ask_metadata(self) -> ModelInfo:
        for endpoint in self.endpoints:
            try:
                meta = await endpoint.stub.ModelMetadata(
                    pb.ModelMetadataRequest(name=self.server_name), timeout=2
                )
            except grpc.aio.AioRpcError:
                continue
            return parse_metadata(meta)
        raise _NoAnswer(self.key)

    async def wait_info(self, seconds: float) -> ModelInfo | None:
        if self._discovery is not None and self.info is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._discovery), seconds)
        return self.info

    def ordered(self) -> list[Endpoint]:
        """Endpoints starting from a rotating offset, so load spreads across them."""
        n = len(self.endpoints)
        start = next(self._rotation) % n
        return [self.endpoints[(start + i) % n] for i in range(n)]

    @property
    def serving(self) -> bool:
        return any(e.serving and e.breaker.in_service() for e in self.endpoints)

    def can(self, task: str) -> bool | None:
        """Whether the model declared `task` (None while its metadata is unknown)."""
        return None if self.info is None else task in self.info.tasks

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
        for endpoint in self.endpoints:
            await endpoint.close()
