"""Two router replicas scraped by a real Prometheus: `router report --prometheus` gives the same
per-arm counts as the sum of both replicas' admin reports."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gamaserving.router.v1 import router_pb2 as rpb
from router.cli import main as router_main
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server
from tests.support.processes import free_port
from tests.support.prom import prometheus
from tests.telemetry.test_prometheus import wait_for

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs the prometheus binary (apt-get install prometheus; .ci/run installs it)",
)


def _config(a: str, b: str) -> dict[str, Any]:
    experiment = {
        "name": "fleet-ab",
        "seed": "s1",
        "arms": [
            {"name": "control", "model": "a", "weight": 0.5},
            {"name": "candidate", "model": "b", "weight": 0.5},
        ],
        "min_samples": 10,
    }
    cfg = base_config({"a": [a], "b": [b]}, tag={"primary": "a", "experiment": experiment})
    cfg["telemetry"] = {"prometheus_host": "127.0.0.1", "prometheus_port": 0}
    return cfg


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


@needs_prometheus
async def test_fleet_report_sums_both_replicas(tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        cfg = _config(a, b)
        (tmp_path / "one").mkdir()
        (tmp_path / "two").mkdir()
        async with (
            live_router(cfg, tmp_path / "one") as one,
            live_router(cfg, tmp_path / "two") as two,
        ):
            for i in range(60):
                await one.process(rpb.TASK_TAG, wav(0.2), user_id=f"u{i}")
            for i in range(60, 100):
                await two.process(rpb.TASK_TAG, wav(0.2), user_id=f"u{i}")
            admin = [
                await r.admin.GetExperimentReport(
                    rpb.GetExperimentReportRequest(experiment="fleet-ab")
                )
                for r in (one, two)
            ]
            expected = {
                arm: sum(next(x.count for x in rep.arms if x.name == arm) for rep in admin)
                for arm in ("control", "candidate")
            }
            assert sum(expected.values()) == 100
            targets = [f"127.0.0.1:{r.server.metrics_port}" for r in (one, two)]
            async with prometheus(tmp_path, {"router": targets}) as port:
                expr = (
                    "sum(gamaserving_router_experiment_observations_total"
                    '{experiment="fleet-ab",metric="error_rate"})'
                )
                assert await wait_for(port, expr, 100) == 100
                out = io.StringIO()
                (tmp_path / "router.yaml").write_text(yaml.safe_dump(cfg))
                args = [
                    "report",
                    "--prometheus",
                    f"http://127.0.0.1:{port}",
                    "--experiment",
                    "fleet-ab",
                    "--config",
                    str(tmp_path / "router.yaml"),
                ]
                with contextlib.redirect_stdout(out):
                    code = await asyncio.to_thread(router_main, args)
    assert code == 0
    fleet = json.loads(out.getvalue(), parse_constant=_not_json)  # strict: no NaN
    assert fleet["counts"] == expected
    # Both arms have no errors: the relative change is undefined, and says so with null.
    (errors,) = [c for c in fleet["comparisons"] if c["metric"] == "error_rate"]
    assert errors["control_mean"] == 0 and errors["relative"] is None
    assert fleet["verdict"] in ("KEEP_RUNNING", "PROMOTE") and fleet["reasons"]
    assert {c["metric"] for c in fleet["comparisons"]} == {
        "latency_ms",
        "error_rate",
        "fallback_rate",
        "quality_failure_rate",
    }


def test_report_without_prometheus_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config("127.0.0.1:1", "127.0.0.1:2")
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(cfg))
    dead = f"http://127.0.0.1:{free_port()}"
    assert (
        router_main(
            [
                "report",
                "--prometheus",
                dead,
                "--experiment",
                "fleet-ab",
                "--config",
                str(tmp_path / "router.yaml"),
            ]
        )
        == 3
    )
    assert "cannot query" in capsys.readouterr().err
    assert (
        router_main(
            [
                "report",
                "--prometheus",
                dead,
                "--experiment",
                "nope",
                "--config",
                str(tmp_path / "router.yaml"),
            ]
        )
        == 2
    )
