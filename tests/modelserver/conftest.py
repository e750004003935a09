"""Model-server fixtures: real aio servers on 127.0.0.1:0 with real channels."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from modelserver.config import ModelConfig, ServerSettings, load_model_config
from modelserver.server import ModelServer


class Live:
    """A running in-process model server and a client stub on a real channel."""

    def __init__(self, server: ModelServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.channel = channel
        self.stub = pb_grpc.GRPCInferenceServiceStub(channel)
        self.core = server.core
        self.name = server.config.name


def with_updates(config: ModelConfig, **sections: dict[str, Any]) -> ModelConfig:
    """Copy of `config` with nested sections updated, e.g. batching={"max_batch_size": 1}."""
    update: dict[str, Any] = {}
    for key, values in sections.items():
        current = getattr(config, key)
        update[key] = (
            current.model_copy(update=values) if hasattr(current, "model_copy") else values
        )
    return config.model_copy(update=update)


@contextlib.asynccontextmanager
async def live_server(
    model_dir: Path,
    load: bool = True,
    settings: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[Live]:
    config = with_updates(load_model_config(model_dir), **sections)
    server = ModelServer(
        ServerSettings(
            model_dir=model_dir,
            host="127.0.0.1",
            port=0,
            device="cpu",
            grace_seconds=5,
            **(settings or {}),
        ),
        config,
    )
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        if load:
            await server.load()
        yield Live(server, channel)
    finally:
        await channel.close()
        await server.drain()


LiveFactory = Callable[..., contextlib.AbstractAsyncContextManager[Live]]


@pytest.fixture
def serve() -> LiveFactory:
    return live_server


@pytest.fixture
async def w2v(tiny_models: Path) -> AsyncIterator[Live]:
    async with live_server(tiny_models / "wav2vec2") as live:
        yield live


@pytest.fixture
async def gama(tiny_models: Path) -> AsyncIterator[Live]:
    async with live_server(tiny_models / "gama") as live:
        yield live


class HeldWorker:
    """Holds the live server's inference worker inside its next model call until released,
    so a test controls exactly what is queued, expires or times out meanwhile."""

    def __init__(self, live: Live) -> None:
        import threading

        assert live.core.batcher is not None
        self.batcher = live.core.batcher
        self.gate = threading.Event()
        self._entered = threading.Event()
        real = self.batcher._run_batch

        def held(items: list[Any]) -> list[Any]:
            self._entered.set()
            self.gate.wait(20)
            return real(items)

        self.batcher._run_batch = held

    async def entered(self) -> None:
        import asyncio

        assert await asyncio.to_thread(self._entered.wait, 5), "the worker never started a call"

    def release(self) -> None:
        self.gate.set()
