"""Outcomes callers report (RecordOutcome): validated against their declarations, kept in the
results store, and judged like latency: a candidate that is faster but worse on an outcome is
not promoted, and an outcome guardrail broken on the fleet rolls it back."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gamaserving.router.v1 import router_pb2 as rpb
from router.config import ExperimentSettings
from router.experiments.results import report
from router.results.query import phase_statistics
from router.results.store import Exposure, Outcome, ResultsStore
from router.rollout.controller import RolloutController
from router.rollout.sources import StoreSource
from router.rollout.store import FileStore
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "tests" / "clients" / "node"
README = (ROOT / "README.md").read_text()
OUTCOMES = {"accepted": {"kind": "binary"}, "rating": {"kind": "numeric", "min": 1, "max": 5}}


def _config(a: str, b: str, **experiment_extra: Any) -> dict[str, Any]:
    experiment = {
        "name": "ab",
        "seed": "p1",
        "arms": [
            {"name": "control", "model": "a", "weight": 0.5},
            {"name": "candidate", "model": "b", "weight": 0.5},
        ],
        **experiment_extra,
    }
    cfg = base_config({"a": [a], "b": [b]}, tag={"primary": "a", "experiment": experiment})
    cfg["outcomes"] = OUTCOMES
    return cfg


async def test_record_outcome_validates_and_stores(tmp_path: Path) -> None:
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        cfg = _config(a, b)
        cfg["routes"]["embed"] = {"primary": "a"}  # no experiment on this route
        async with live_router(cfg, tmp_path) as router:
            answer = await router.process(rpb.TASK_TAG, wav(0.2), user_id="alice")
            rid = answer.request_id
            for request, needle in [
                (rpb.RecordOutcomeRequest(request_id=rid, metric="liked", value=1), "metric:"),
                (rpb.RecordOutcomeRequest(request_id=rid, metric="accepted", value=2), "0 or 1"),
                (rpb.RecordOutcomeRequest(request_id=rid, metric="rating", value=6), "above max"),
                (rpb.RecordOutcomeRequest(request_id=rid, metric="rating", value=0.5), "below"),
                (rpb.RecordOutcomeRequest(metric="accepted", value=1), "request_id is required"),
                (
                    rpb.RecordOutcomeRequest(request_id=rid, metric="rating", value=float("nan")),
                    "not a number",
                ),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await router.stub.RecordOutcome(request)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert needle in (info.value.details() or ""), info.value.details()
            await router.stub.RecordOutcome(
                rpb.RecordOutcomeRequest(request_id=rid, metric="accepted", value=1)
            )
            await router.stub.RecordOutcome(
                rpb.RecordOutcomeRequest(request_id=rid, metric="rating", value=4.5)
            )
            # An outcome for a request outside any experiment is kept too, and trends its model.
            outside = await router.process(rpb.TASK_EMBED, wav(0.2), user_id="bob")
            await router.stub.RecordOutcome(
                rpb.RecordOutcomeRequest(request_id=outside.request_id, metric="accepted", value=0)
            )
            await router.flush()
            assert router.core.results is not None
            arms = phase_statistics(router.core.results.store, "ab", "p1", ["accepted", "rating"])
            (arm,) = [s for s in arms.values() if s.requests]
            assert arm.metrics["accepted"].mean == 1.0 and arm.metrics["rating"].mean == 4.5
            quality = await router.admin.GetQualityReport(rpb.GetQualityReportRequest(model="a"))
            trends = {t.metric: t for t in quality.trends}
            (point,) = trends["outcome:accepted"].points
            served_by_a = answer.route.model == "a"
            assert point.count == 1 + served_by_a
            assert point.value == pytest.approx((1.0 if served_by_a else 0.0) / point.count)
            # Still serving after every refusal.
            assert (await router.process(rpb.TASK_TAG, wav(0.2))).quality.passed


async def test_a_router_without_a_store_refuses_outcomes_precisely(tmp_path: Path) -> None:
    async with fault_server("a") as (_, a):
        cfg = base_config({"a": [a]}, tag={"primary": "a"})
        del cfg["results"]
        async with live_router(cfg, tmp_path) as router:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await router.stub.RecordOutcome(
                    rpb.RecordOutcomeRequest(request_id="x", metric="accepted", value=1)
                )
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "results" in (info.value.details() or "")


def _phase(store: ResultsStore, accepted: dict[str, float], users: int = 400) -> None:
    """A faster candidate (latency 80 vs 100 ms) whose answers users accept less often."""
    rng = random.Random(3)
    rows, reports = [], []
    for arm, latency in (("control", 100.0), ("candidate", 80.0)):
        for u in range(users):
            for k in range(2):
                rid = f"{arm}-{u}-{k}"
                rows.append(
                    Exposure(rid, "ab", "p1", arm, "a" if arm == "control" else "b",
                             f"{arm}-{u}", 1.0, latency + rng.gauss(0, 5), False, False, False)
                )  # fmt: skip
                reports.append(Outcome(rid, "accepted", float(rng.random() < accepted[arm]), 2.0))
    store.write(rows, reports)


def test_faster_but_worse_on_an_outcome_is_not_promoted(tmp_path: Path) -> None:
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    _phase(store, {"control": 0.8, "candidate": 0.6})
    e = ExperimentSettings.model_validate(
        {
            "name": "ab",
            "seed": "p1",
            "arms": [
                {"name": "control", "model": "a", "weight": 0.5},
                {"name": "candidate", "model": "b", "weight": 0.5},
            ],
            "success": [
                {"metric": "latency_ms", "max_relative_increase": 0.0},
                {"metric": "accepted", "max_absolute_increase": 0.02},
            ],
        }
    )
    arms = phase_statistics(store, "ab", "p1", ["accepted"])
    latency_only = e.model_copy(update={"success": e.success[:1]})
    assert report(latency_only, arms).verdict == "PROMOTE"  # latency alone would promote it
    judged = report(e, arms, {"accepted": True})
    assert judged.verdict == "KEEP_RUNNING", judged.reasons
    assert any("success accepted" in r for r in judged.reasons), judged.reasons
    (accepted,) = [c for c in judged.comparisons if c.metric == "accepted"]
    assert accepted.arm_mean < accepted.control_mean
    store.close()


async def test_an_outcome_guardrail_broken_on_the_fleet_rolls_back(tmp_path: Path) -> None:
    cfg = _config(
        "127.0.0.1:1",
        "127.0.0.1:2",
        auto_rollback=True,
        guardrails=[{"metric": "accepted", "max_absolute_increase": 0.05}],
    )
    cfg["rollout"] = {"state_file": "rollout.json"}
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.sqlite'}")
    _phase(store, {"control": 0.8, "candidate": 0.6})
    controller = RolloutController(path, StoreSource(store), FileStore(tmp_path / "rollout.json"))
    round_ = await controller.evaluate()
    assert [d.action for d in round_.decisions] == ["start", "rollback"]
    assert "guardrail accepted" in round_.decisions[-1].reasons[0]
    store.close()


async def test_a_node_client_reports_an_outcome_as_the_readme_shows(tmp_path: Path) -> None:
    import asyncio
    import re
    import shutil
    import subprocess

    script = NODE_CLIENT / "record_outcome.js"
    (shown,) = re.findall(r"```js\n(.*?)```", README, flags=re.S)
    assert shown.strip() in script.read_text()  # the README's lines are the tested client's
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node (Node.js) for the other-language client")
    if not (script.parent / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("needs npm to install the Node.js client's packages (make node-client)")
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        async with live_router(_config(a, b), tmp_path) as router:
            answer = await router.process(rpb.TASK_TAG, wav(0.2), user_id="carol")
            address = f"127.0.0.1:{router.server.port}"

            def run(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [node, str(script), address, *args], capture_output=True, text=True, timeout=30
                )

            done = await asyncio.to_thread(run, answer.request_id, "rating", "4")
            assert done.returncode == 0, done.stderr
            refused = await asyncio.to_thread(run, answer.request_id, "accepted", "2")
            assert refused.returncode == 2 and "INVALID_ARGUMENT" in refused.stderr
            await router.flush()
            assert router.core.results is not None
            arms = phase_statistics(router.core.results.store, "ab", "p1", ["rating"])
            (arm,) = [s for s in arms.values() if s.requests]
            assert arm.metrics["rating"].mean == 4.0


async def test_a_store_that_is_down_fails_no_request_and_drops_are_alerted(tmp_path: Path) -> None:
    from tests.support.processes import free_port

    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        cfg = _config(a, b)
        # Nothing listens there: every write fails at once.
        cfg["results"] = {
            "url": f"postgresql://nobody@127.0.0.1:{free_port()}/none",
            "flush_ms": 50,
            "max_buffer": 5,
        }
        cfg["alerting"] = {"evaluation_seconds": 0.1}
        async with live_router(cfg, tmp_path) as router:
            for i in range(20):
                answer = await router.process(rpb.TASK_TAG, wav(0.2), user_id=f"u{i}")
                await router.stub.RecordOutcome(
                    rpb.RecordOutcomeRequest(
                        request_id=answer.request_id, metric="accepted", value=1
                    )
                )
            assert router.core.results is not None
            writer = router.core.results.writer
            assert writer.pending == 5 and writer.stats.dropped == 35  # 20 + 20 events, 5 kept
            for _ in range(100):
                alerts = (await router.admin.ListAlerts(rpb.ListAlertsRequest())).alerts
                if any(x.name == "ResultsDropped" for x in alerts):
                    break
                await asyncio.sleep(0.05)
            (dropped,) = [x for x in alerts if x.name == "ResultsDropped"]
            assert dropped.state == "firing" and "experiment events dropped" in dropped.summary
