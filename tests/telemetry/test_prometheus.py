"""A real Prometheus server scrapes a router and a model server on loopback; its HTTP API
reports the request counts of the traffic sent."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from gamaserving.router.v1 import router_pb2 as rpb
from tests.modelserver.conftest import live_server
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.prom import prometheus

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs the prometheus binary (apt-get install prometheus; .ci/run installs it)",
)


def query(port: int, expr: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(urllib.request.urlopen(url, timeout=2).read())
    except OSError:
        return None
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


async def wait_for(port: int, expr: str, want: float, within: float = 30) -> float | None:
    deadline = time.monotonic() + within
    got = None
    while time.monotonic() < deadline:
        got = await asyncio.to_thread(query, port, expr)
        if got == want:
            return got
        await asyncio.sleep(0.5)
    return got


async def test_prometheus_scrapes_router_and_model_server(
    tiny_models: Path, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    async with live_server(tiny_models / "wav2vec2", settings={"metrics_port": 0}) as w2v:
        cfg = base_config(
            {"wav2vec2": [f"127.0.0.1:{w2v.server.port}"]}, transcribe={"primary": "wav2vec2"}
        )
        cfg["telemetry"] = {"prometheus_host": "127.0.0.1", "prometheus_port": 0}
        async with live_router(cfg, tmp_path) as router:
            assert w2v.server.telemetry is not None
            jobs = {
                "router": [f"127.0.0.1:{router.server.metrics_port}"],
                "modelserver": [f"127.0.0.1:{w2v.server.telemetry.port}"],
            }
            async with prometheus(tmp_path, jobs) as port:
                assert await wait_for(port, 'sum(up{job=~"router|modelserver"})', 2) == 2, (
                    tmp_path / "prometheus.log"
                ).read_text()[-2000:]
                for _ in range(7):
                    await router.process(rpb.TASK_TRANSCRIBE, wav(0.5))
                routed = await wait_for(
                    port,
                    'sum(gamaserving_router_requests_total{task="transcribe",outcome="ok"})',
                    7,
                )
                served = await wait_for(
                    port,
                    'sum(gamaserving_modelserver_requests_total{task="transcribe",outcome="ok"})',
                    7,
                )
                assert (routed, served) == (7, 7)
