"""Router fixtures: routers started in process on 127.0.0.1:0 from a written YAML file (the
shared model-server processes are in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from router.results.store import ResultsStore
from router.server import RouterServer
from tests.support.postgres import Postgres


def base_config(endpoints: dict[str, list[str]], **routes: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"port": 0, "grace_seconds": 5, "reload_poll_seconds": 0.2},
        "models": {
            name: {"endpoints": targets, "timeout_ms": 5000} for name, targets in endpoints.items()
        },
        "routes": routes,
        # Relative to the configuration file: each test's own store, in its tmp_path.
        "results": {"url": "sqlite:///results.sqlite", "flush_ms": 50},
    }


class LiveRouter:
    def __init__(self, server: RouterServer, channel: grpc.aio.Channel, path: Path) -> None:
        self.server = server
        self.core = server.core
        self.channel = channel
        self.path = path
        self.stub = rpb_grpc.AudioRouterStub(channel)
        self.admin = rpb_grpc.RouterAdminStub(channel)

    async def all_serving(self) -> None:
        """Wait for every endpoint's first health answer (the router starts before it comes,
        and an endpoint not yet known SERVING is skipped as unhealthy)."""
        assert self.core.state is not None
        for backend in self.core.state.backends.values():
            for endpoint in backend.endpoints:
                while not endpoint.serving:
                    endpoint.health_changed.clear()
                    await asyncio.wait_for(endpoint.health_changed.wait(), 10)

    async def flush(self) -> None:
        """Write what the results writer holds, so the store has every exposure so far."""
        assert self.core.results is not None
        assert await self.core.results.writer.flush()

    async def process(
        self, task: int, audio: bytes, deadline_s: float = 10, **kwargs: Any
    ) -> rpb.ProcessResponse:
        return await self.stub.Process(
            rpb.ProcessRequest(audio=audio, task=task, **kwargs), timeout=deadline_s
        )  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def live_router(
    config: dict[str, Any],
    tmp_path: Path,
    metadata_wait: float = 5.0,
    config_path: Path | None = None,
) -> AsyncIterator[LiveRouter]:
    """A router on 127.0.0.1:0 from `config` written to a file, or from `config_path` as is."""
    path = config_path or tmp_path / "router.yaml"
    if config_path is None:
        path.write_text(yaml.safe_dump(config))
    server = RouterServer(path, port=0, host="127.0.0.1", metadata_wait=metadata_wait)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield LiveRouter(server, channel, path)
    finally:
        await channel.close()
        await server.drain(grace=2)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultsStore]:
    """A results store on SQLite (the standard library's) and on PostgreSQL (started on
    loopback): the tests that take it run on both."""
    if request.param == "sqlite":
        s = ResultsStore(f"sqlite:///{tmp_path / 'results.sqlite'}")
    else:
        server: Postgres = request.getfixturevalue("postgres")
        s = ResultsStore(server.url)
    s.create()
    try:
        yield s
    finally:
        s.close()
