"""A server whose port is taken: it says so, names the setting, and leaves nothing running
(no asyncio task, no thread, no open channel), for the router and the model server.
OTLP export is switched on (to a receiver that is never there) so that telemetry and tracing
start their threads, which a failed start must stop again."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from modelserver.config import ServerSettings, load_model_config
from modelserver.server import ModelServer
from router.server import RouterServer, StartupError
from tests.router.conftest import base_config
from tests.support.processes import ServerProcess, free_port


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port another process is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")


async def grpc_started() -> set[asyncio.Task[object]]:
    """What this loop keeps once gRPC and `to_thread` have been used (gRPC's poller thread,
    the loop's default executor): the baseline a failed start must return to."""
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await server.stop(0)
    await asyncio.to_thread(int)
    return set(asyncio.all_tasks())


async def leftovers(
    threads_before: set[threading.Thread], tasks_before: set[asyncio.Task[object]]
) -> tuple[list[str], list[str]]:
    """Tasks and threads that outlive the start. A cancelled call's task and an executor's
    thread may take a moment to end, so they get a few seconds."""
    for _ in range(100):
        tasks = [t.get_name() for t in asyncio.all_tasks() if t not in tasks_before]
        threads = [
            t.name
            for t in threading.enumerate()
            # gRPC's process-wide poller for synchronous channels (OTLP's exporters use one)
            # starts once, with the first of them, and is kept for the process's life.
            if t not in threads_before and "_poll_wrapper" not in t.name
        ]
        if not tasks and not threads:
            break
        await asyncio.sleep(0.05)
    return tasks, threads


async def test_a_router_whose_port_is_taken_stops_everything_it_started(
    model_servers: dict[str, ServerProcess], tmp_path: Path, taken: int, otlp: None
) -> None:
    cfg = base_config(
        {"wav2vec2": [model_servers["wav2vec2"].address]}, transcribe={"primary": "wav2vec2"}
    )
    cfg["server"]["port"] = taken
    cfg["telemetry"] = {"prometheus_port": 0}
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    tasks_before = await grpc_started()
    before = set(threading.enumerate())
    router = RouterServer(path, host="127.0.0.1")
    with pytest.raises(StartupError) as info:
        await router.start()
    assert f"server.port: cannot listen on 127.0.0.1:{taken}" in str(info.value)
    # It had got as far as the model server (its metadata answered) before the listen failed.
    (backend,) = router.core.state.backends.values()  # type: ignore[union-attr]
    assert backend.info is not None
    # Health watches, discovery, the results writer, telemetry's and tracing's threads.
    assert await leftovers(before, tasks_before) == ([], [])
    assert all(e.channel._channel.closed() for e in backend.endpoints)


def test_the_router_command_exits_with_the_reason(tmp_path: Path, taken: int) -> None:
    cfg = base_config({"m": [f"127.0.0.1:{free_port()}"]}, transcribe={"primary": "m"})
    cfg["server"].update(port=taken, host="127.0.0.1")
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "router.cli",
            "serve",
            "--config",
            str(path),
            "--metadata-wait",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"server.port: cannot listen on 127.0.0.1:{taken}" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_model_server_whose_port_is_taken_stops_everything_it_started(
    tiny_models: Path, taken: int, otlp: None
) -> None:
    model_dir = tiny_models / "wav2vec2"
    tasks_before = await grpc_started()
    before = set(threading.enumerate())
    settings = ServerSettings(model_dir=model_dir, host="127.0.0.1", port=taken, metrics_port=0)
    server = ModelServer(settings, load_model_config(model_dir))
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken}"):
        await server.start()
    assert await leftovers(before, tasks_before) == ([], [])
