"""Hot reload: a valid file applies without dropping a request; an invalid one is rejected,
logged, and the old configuration stays."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server
from tests.support.processes import ServerProcess, free_port, router_args

CLIP = wav(0.3)


def _config(
    a: str, b: str, weights: tuple[float, float], seed: str, coverage: float = 1.0
) -> dict[str, Any]:
    experiment = {
        "name": "ab",
        "seed": seed,
        "coverage": coverage,
        "arms": [
            {"name": "control", "model": "a", "weight": weights[0]},
            {"name": "candidate", "model": "b", "weight": weights[1]},
        ],
    }
    return base_config(
        {"a": [a], "b": [b]}, tag={"primary": "a", "fallbacks": ["b"], "experiment": experiment}
    )


async def test_reload_changes_weights_under_load_without_a_failed_request(tmp_path: Path) -> None:
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        async with live_router(_config(a, b, (1.0, 0.0), "phase-1"), tmp_path) as router:
            results: list[tuple[float, Any]] = []
            stop = time.monotonic() + 3.0

            async def client(k: int) -> None:
                i = 0
                while time.monotonic() < stop:
                    i += 1
                    t0 = time.monotonic()
                    try:
                        r: Any = await router.process(rpb.TASK_TAG, CLIP, user_id=f"u{k}-{i}")
                    except grpc.aio.AioRpcError as exc:
                        r = exc
                    results.append((t0, r))

            load = asyncio.gather(*(client(k) for k in range(6)))
            await asyncio.sleep(1.0)
            router.path.write_text(yaml.safe_dump(_config(a, b, (0.0, 1.0), "phase-2")))
            changed = time.monotonic()
            for _ in range(1000):  # the file watch polls every 0.2 s
                if router.server.reloads:
                    break
                await asyncio.sleep(0.01)
            swapped = time.monotonic()  # every request that starts from here sees the new file
            await load
            assert router.server.reloads == 1
    assert not [r for _, r in results if isinstance(r, Exception)]
    early = [r for t, r in results if t < changed - 0.3]  # in flight at the swap: either is right
    late = [r for t, r in results if t > swapped]
    assert early and all(r.route.arm == "control" for r in early), {
        (r.route.arm, r.route.model) for r in early
    }
    assert late and all(r.route.arm == "candidate" and r.route.model == "b" for r in late)


async def test_invalid_reload_keeps_the_old_configuration(tmp_path: Path, caplog: Any) -> None:
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        async with live_router(_config(a, b, (0.5, 0.5), "p1"), tmp_path) as router:
            bad = _config(a, b, (0.9, 0.4), "p2")
            router.path.write_text(yaml.safe_dump(bad))
            assert not await router.server.reload()
            router.path.write_text("routes: [not, a, mapping")
            assert not await router.server.reload()
            unknown = _config(a, b, (0.5, 0.5), "p3")
            unknown["routes"]["tag"]["primary"] = "c"
            router.path.write_text(yaml.safe_dump(unknown))
            assert not await router.server.reload()
            assert router.server.reload_failures == 3 and router.server.reloads == 0
            (experiment,) = (
                await router.admin.ListExperiments(rpb.ListExperimentsRequest())
            ).experiments
            assert experiment.seed == "p1" and [a.weight for a in experiment.arms] == [0.5, 0.5]
            assert (await router.process(rpb.TASK_TAG, CLIP)).quality.passed
    rejected = [r for r in caplog.records if "reload rejected" in r.getMessage()]
    assert len(rejected) == 3
    assert "weights sum to 1.3" in rejected[0].getMessage()
    assert "routes.tag.primary: unknown model 'c'" in rejected[2].getMessage()


async def test_one_reload_reports_field_and_semantic_errors_together(
    tmp_path: Path, caplog: Any
) -> None:
    async with (
        fault_server("a", declares="embed") as (_, a),
        fault_server("b") as (_, b),
    ):
        cfg = base_config({"a": [a], "b": [b]}, tag={"primary": "b"}, embed={"primary": "a"})
        async with live_router(cfg, tmp_path) as router:
            cfg["server"]["max_in_flight"] = -1  # a field error
            cfg["routes"]["tag"]["primary"] = "a"  # a semantic one: a declared embed only
            router.path.write_text(yaml.safe_dump(cfg))
            assert not await router.server.reload()
    (record,) = [r for r in caplog.records if "reload rejected" in r.getMessage()]
    message = record.getMessage()
    assert "server.max_in_flight: Input should be greater than" in message, message
    assert "routes.tag.primary: model 'a' cannot tag (it supports embed)" in message, message


def test_sighup_reloads_a_router_process(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fault_server("a") as (_, a), fault_server("b") as (_, b):
            cfg = _config(a, b, (0.5, 0.5), "p1", coverage=0.1)
            cfg["server"]["reload_poll_seconds"] = 3600  # only SIGHUP can trigger it here
            path = tmp_path / "router.yaml"
            path.write_text(yaml.safe_dump(cfg))
            port = free_port()
            proc = ServerProcess(router_args(path, port), tmp_path / "router.log", port).start()
            try:
                await asyncio.to_thread(proc.wait_status, "readiness")
                cfg["routes"]["tag"]["experiment"]["coverage"] = 0.5
                path.write_text(yaml.safe_dump(cfg))
                proc.signal(signal.SIGHUP)
                async with grpc.aio.insecure_channel(proc.address) as channel:
                    admin = rpb_grpc.RouterAdminStub(channel)
                    for _ in range(100):
                        (e,) = (
                            await admin.ListExperiments(rpb.ListExperimentsRequest())
                        ).experiments
                        if e.coverage == 0.5:
                            break
                        await asyncio.sleep(0.05)
                    assert e.coverage == 0.5
                proc.signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 20) == 0
                assert "configuration reloaded" in proc.log()
            finally:
                proc.stop()

    asyncio.run(scenario())


def test_router_serve_refuses_an_invalid_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        yaml.safe_dump(
            {"models": {"a": {"endpoints": ["127.0.0.1:1"]}}, "routes": {"tag": {"primary": "b"}}}
        )
    )
    done = subprocess.run(
        router_args(path, free_port()), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "routes.tag.primary: unknown model 'b'" in done.stderr and "Traceback" not in done.stderr


async def test_reload_follows_a_kubernetes_configmap_update(tmp_path: Path) -> None:
    """The kubelet updates a mounted ConfigMap by writing a new timestamped directory and
    swapping the `..data` symlink atomically; `router.yaml` is a symlink through it."""
    mount = tmp_path / "config"
    mount.mkdir()

    def publish(config: dict[str, Any], stamp: str) -> None:
        data = mount / f"..{stamp}"
        data.mkdir()
        (data / "router.yaml").write_text(yaml.safe_dump(config))
        link = mount / "..data_tmp"
        link.symlink_to(data.name)
        link.replace(mount / "..data")

    server = {"port": 0, "grace_seconds": 1, "reload_poll_seconds": 0.1}
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        publish({**_config(a, b, (1.0, 0.0), "phase-1"), "server": server}, "2026_11_24_1")
        (mount / "router.yaml").symlink_to("..data/router.yaml")
        async with live_router({}, tmp_path, config_path=mount / "router.yaml") as router:
            before = await router.process(rpb.TASK_TAG, CLIP, user_id="u1")
            assert before.route.model == "a"
            publish({**_config(a, b, (0.0, 1.0), "phase-2"), "server": server}, "2026_11_24_2")
            for _ in range(100):
                if router.server.reloads:
                    break
                await asyncio.sleep(0.05)
            assert router.server.reloads == 1
            after = await router.process(rpb.TASK_TAG, CLIP, user_id="u1")
            assert after.route.model == "b"


async def test_reload_applies_new_anomaly_and_trend_settings(tmp_path: Path) -> None:
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        cfg = _config(a, b, (0.5, 0.5), "s1")
        async with live_router(cfg, tmp_path) as router:
            for i in range(40):
                await router.process(rpb.TASK_TAG, CLIP, user_id=f"u{i}")
            learned = dict(router.core.anomalies.detectors)
            assert learned and router.core.anomalies.settings.threshold == 4.0
            cfg["anomaly"] = {"threshold": 2.5, "warmup": 10}
            cfg["trends"] = {"bucket_seconds": 30, "buckets": 10}
            router.path.write_text(yaml.safe_dump(cfg))
            assert await router.server.reload()
            anomalies, trends = router.core.anomalies, router.core.trends
            assert (anomalies.settings.threshold, anomalies.settings.warmup) == (2.5, 10)
            assert all(d.s.threshold == 2.5 for d in anomalies.detectors.values())
            assert anomalies.detectors == learned  # the baselines learned so far are kept
            assert (trends.settings.bucket_seconds, trends.settings.buckets) == (30, 10)
