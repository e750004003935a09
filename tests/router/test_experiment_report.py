"""Experiment reports: verdicts from guardrails and success criteria, the sample-ratio check,
phases kept apart, and ramps and rollbacks decided by the rollout controller and applied by a
live router, with a fault-injecting candidate."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gamaserving.router.v1 import router_pb2 as rpb
from router.config import ExperimentSettings, load_config
from router.experiments.results import report
from router.results.store import ResultsStore
from router.rollout.controller import RolloutController
from router.rollout.sources import StoreSource
from router.rollout.store import FileStore
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.experiments import applied, arm, listed_experiment
from tests.support.fault_server import fault_server


def experiment(**extra: Any) -> ExperimentSettings:
    arms = [
        {"name": "control", "model": "a", "weight": 0.5},
        {"name": "candidate", "model": "b", "weight": 0.5},
    ]
    return ExperimentSettings.model_validate(
        {"name": "e", "seed": "s", "arms": arms, "min_samples": 50, **extra}
    )


def test_guardrail_failure_rolls_back() -> None:
    e = experiment(guardrails=[{"metric": "error_rate", "max_absolute_increase": 0.01}])
    r = report(e, {"control": arm(2000, 100), "candidate": arm(2000, 100, error_rate=0.2, seed=1)})
    assert r.verdict == "ROLL_BACK" and "guardrail error_rate" in r.reasons[0]
    (errors,) = [c for c in r.comparisons if c.metric == "error_rate"]
    assert errors.effect.difference == pytest.approx(0.2) and errors.cs[0] > 0.01


def test_healthy_candidate_is_promoted_on_its_success_criteria() -> None:
    e = experiment(
        success=[
            {"metric": "latency_ms", "max_relative_increase": 0.5},
            {"metric": "error_rate", "max_absolute_increase": 0.01},
        ]
    )
    r = report(e, {"control": arm(3000, 100), "candidate": arm(3000, 101, seed=2)})
    assert r.verdict == "PROMOTE", r.reasons
    (latency,) = [c for c in r.comparisons if c.metric == "latency_ms"]
    assert latency.effect.relative == pytest.approx(0.01, abs=0.01) and latency.cs[1] < 50


def test_too_few_samples_or_a_ratio_mismatch_keep_it_running() -> None:
    e = experiment(success=[{"metric": "error_rate", "max_absolute_increase": 0.01}])
    few = report(e, {"control": arm(20, 100), "candidate": arm(20, 100, seed=3)})
    assert few.verdict == "KEEP_RUNNING" and "fewer than 50" in few.reasons[0]
    skewed = report(e, {"control": arm(10_400, 100), "candidate": arm(9_600, 100, seed=4)})
    assert skewed.verdict == "KEEP_RUNNING" and skewed.srm_p_value < 0.001
    assert "sample ratio mismatch" in skewed.reasons[0]


def test_relative_bounds_are_fractions_and_reasons_are_text() -> None:
    with pytest.raises(ValueError, match=r"did you mean a percentage, 0\.2\?"):
        experiment(success=[{"metric": "latency_ms", "max_relative_increase": 20}])
    e = experiment(
        success=[{"metric": "latency_ms", "max_relative_increase": 0.2}],
        guardrails=[
            {"metric": "latency_ms", "max_absolute_increase": 1000, "max_relative_increase": 0.1}
        ],
    )
    slow = report(e, {"control": arm(3000, 100), "candidate": arm(3000, 150, seed=5)})
    # +10 % of a control mean of about 100 ms allows about 10 ms, not 1,000 (a factor of 10).
    assert slow.verdict == "ROLL_BACK"
    allowed = re.search(
        r"allowed 1000 or \+10% of control, the smaller \(([\d.]+)\)", slow.reasons[0]
    )
    assert allowed and 9 < float(allowed[1]) < 11, slow.reasons
    few = report(e, {"control": arm(20, 100), "candidate": arm(21, 100, seed=6)})
    assert "some arm: control 20, candidate 21" in few.reasons[0], few.reasons
    pending = report(e, {"control": arm(60, 100), "candidate": arm(60, 110, seed=7)})
    within = re.search(r"within \+20% of control \(([\d.]+)\)", pending.reasons[0])
    assert within and 18 < float(within[1]) < 22, pending.reasons


def _config(
    control: str, candidate: str, tmp_path: Path, **experiment_extra: Any
) -> dict[str, Any]:
    e = {
        "name": "gama-ab",
        "seed": "phase-1",
        "arms": [
            {"name": "control", "model": "incumbent", "weight": 0.5},
            {"name": "candidate", "model": "candidate", "weight": 0.5},
        ],
        "min_samples": 20,
        **experiment_extra,
    }
    cfg = base_config(
        {"incumbent": [control], "candidate": [candidate]},
        embed={"primary": "incumbent", "experiment": e},
    )
    cfg["alerting"] = {"evaluation_seconds": 0.1}
    cfg["rollout"] = {"state_file": str(tmp_path / "rollout.json"), "poll_seconds": 0.05}
    return cfg


@contextlib.asynccontextmanager
async def controller_for(router: Any) -> AsyncIterator[RolloutController]:
    """The rollout controller on the router's results store, writing the state file its
    configuration names. Tests call `evaluate()` themselves: each round is an event."""
    config = load_config(router.path)
    assert config.rollout.state_file is not None and config.results is not None
    store = ResultsStore(config.results.resolved_url())
    try:
        yield RolloutController(
            router.path, StoreSource(store), FileStore(config.rollout.state_file)
        )
    finally:
        store.close()


async def _traffic(router: Any, users: range) -> list[rpb.ProcessResponse]:
    """One request per user, every exposure in the store when it returns."""
    answers = [await router.process(rpb.TASK_EMBED, wav(0.3), user_id=f"user-{u}") for u in users]
    await router.flush()
    return answers


async def test_failing_candidate_is_rolled_back_by_the_controller(tmp_path: Path) -> None:
    async with (
        fault_server("incumbent") as (_, a),
        fault_server("candidate", mode="internal") as (_, b),
    ):
        cfg = _config(
            a,
            b,
            tmp_path,
            guardrails=[{"metric": "fallback_rate", "max_absolute_increase": 0.05}],
            auto_rollback=True,
        )
        async with live_router(cfg, tmp_path) as router, controller_for(router) as controller:
            first = await _traffic(router, range(0, 200))
            assert {"control", "candidate"} <= {r.route.arm for r in first}
            assert all(r.route.model == "incumbent" for r in first), {
                (r.route.arm, r.route.model, r.route.fallback_reason) for r in first
            }
            assert (await listed_experiment(router)).coverage_source == "config"
            report_ = await router.admin.GetExperimentReport(
                rpb.GetExperimentReportRequest(experiment="gama-ab")
            )
            assert (
                report_.verdict == "ROLL_BACK" and "guardrail fallback_rate" in report_.reasons[0]
            )
            assert not report_.rolled_back  # the replica itself decides nothing
            round_ = await controller.evaluate()
            assert [d.action for d in round_.decisions] == ["start", "rollback"]
            rollback = round_.decisions[-1]
            assert rollback.counts == {a.name: a.count for a in report_.arms}
            assert rollback.verdict == "ROLL_BACK" and rollback.reasons
            listed = await applied(router, 0.0)
            assert listed.coverage_source == "rollout" and listed.rollout_status == "rolled_back"
            after = await router.admin.GetExperimentReport(
                rpb.GetExperimentReportRequest(experiment="gama-ab")
            )
            assert after.rolled_back
            later = await _traffic(router, range(200, 260))
            assert all(
                r.route.arm == "" and r.route.model == "incumbent" and not r.route.fallback_used
                for r in later
            ), {(r.route.arm, r.route.model, r.route.fallback_reason) for r in later}
            for _ in range(100):
                alerts = {
                    a.name for a in (await router.admin.ListAlerts(rpb.ListAlertsRequest())).alerts
                }
                if "ExperimentRolledBack" in alerts:
                    break
                await asyncio.sleep(0.05)
            assert "ExperimentRolledBack" in alerts
            # A rolled-back phase stays rolled back: later rounds decide nothing.
            assert (await controller.evaluate()).decisions == []


async def test_healthy_candidate_keeps_running_or_is_promoted_with_reasons(tmp_path: Path) -> None:
    async with fault_server("incumbent") as (_, a), fault_server("candidate") as (_, b):
        cfg = _config(
            a,
            b,
            tmp_path,
            guardrails=[{"metric": "error_rate", "max_absolute_increase": 0.05}],
            success=[
                {"metric": "error_rate", "max_absolute_increase": 0.02},
                {"metric": "latency_ms", "max_relative_increase": 1.0},
            ],
        )
        async with live_router(cfg, tmp_path) as router:
            await _traffic(router, range(300))
            r = await router.admin.GetExperimentReport(
                rpb.GetExperimentReportRequest(experiment="gama-ab")
            )
            assert r.verdict in ("PROMOTE", "KEEP_RUNNING") and r.reasons and not r.rolled_back
            assert {a.name: a.count for a in r.arms}.keys() == {"control", "candidate"}
            assert sum(a.count for a in r.arms) == 300 and r.srm_p_value > 0.001
            assert r.seed == "phase-1" and r.current_phase
            assert router.core.results.store.count("gama-ab", "phase-1") == 300
            assert not r.moments  # the store is the one source; nothing is summed over replicas
            metrics = {c.metric for c in r.comparisons if c.arm == "candidate"}
            assert metrics == {"latency_ms", "error_rate", "fallback_rate", "quality_failure_rate"}
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await router.admin.GetExperimentReport(
                    rpb.GetExperimentReportRequest(experiment="nope")
                )
            assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_ramp_advances_one_step_at_a_time_on_healthy_verdicts(tmp_path: Path) -> None:
    async with fault_server("incumbent") as (_, a), fault_server("candidate") as (_, b):
        cfg = _config(
            a,
            b,
            tmp_path,
            coverage=0.05,
            ramp=[0.2, 0.6, 1.0],
            min_samples=10,
            guardrails=[{"metric": "error_rate", "max_absolute_increase": 0.05}],
        )
        async with live_router(cfg, tmp_path) as router, controller_for(router) as controller:
            seen = [(await listed_experiment(router)).coverage]
            user = 0
            for _ in range(300):
                await _traffic(router, range(user, user + 20))
                user += 20
                for d in (await controller.evaluate()).decisions:
                    if d.action == "ramp":
                        listed = await applied(router, d.to_coverage)
                        seen.append(listed.coverage)
                if seen[-1] == 1.0:
                    break
            assert seen == [0.05, 0.2, 0.6, 1.0]
            assert (await listed_experiment(router)).rollout_status == "steady"


async def test_a_failing_candidate_never_ramps(tmp_path: Path) -> None:
    async with (
        fault_server("incumbent") as (_, a),
        fault_server("candidate", mode="internal") as (_, b),
    ):
        cfg = _config(
            a,
            b,
            tmp_path,
            coverage=0.5,
            ramp=[1.0],
            min_samples=10,
            guardrails=[{"metric": "fallback_rate", "max_absolute_increase": 0.05}],
        )
        async with live_router(cfg, tmp_path) as router, controller_for(router) as controller:
            actions = []
            for start in range(0, 400, 100):
                await _traffic(router, range(start, start + 100))
                actions += [d.action for d in (await controller.evaluate()).decisions]
            assert actions == ["start"]  # four rounds ran; none ramped (no auto_rollback here)
            assert (await listed_experiment(router)).coverage == 0.5
            verdict = await router.admin.GetExperimentReport(
                rpb.GetExperimentReportRequest(experiment="gama-ab")
            )
            assert verdict.verdict == "ROLL_BACK" and not verdict.rolled_back


async def test_a_new_seed_starts_a_phase_from_zero(tmp_path: Path) -> None:
    async with fault_server("incumbent") as (_, a), fault_server("candidate") as (_, b):
        cfg = _config(a, b, tmp_path)
        async with live_router(cfg, tmp_path) as router:
            await _traffic(router, range(120))
            cfg["routes"]["embed"]["experiment"]["seed"] = "phase-2"
            router.path.write_text(yaml.safe_dump(cfg))
            assert await router.server.reload()
            fresh = await router.admin.GetExperimentReport(
                rpb.GetExperimentReportRequest(experiment="gama-ab")
            )
            assert fresh.seed == "phase-2" and fresh.current_phase
            assert [a.count for a in fresh.arms] == [0, 0] and not fresh.moments
            assert fresh.srm_p_value == 1.0
            await _traffic(router, range(1000, 1040))
            now = await router.admin.GetExperimentReport(
                rpb.GetExperimentReportRequest(experiment="gama-ab")
            )
            assert sum(a.count for a in now.arms) == 40
            before = await router.admin.GetExperimentReport(
                rpb.GetExperimentReportRequest(experiment="gama-ab", seed="phase-1")
            )
            assert sum(a.count for a in before.arms) == 120 and not before.current_phase
            assert list((await listed_experiment(router)).phases) == ["phase-2", "phase-1"]


def test_a_governed_experiment_needs_a_state_file() -> None:
    from router.config import RouterConfig

    cfg = _config("127.0.0.1:1", "127.0.0.1:2", Path("/tmp"), ramp=[0.5, 1.0], coverage=0.1)
    del cfg["rollout"]
    with pytest.raises(ValueError, match=r"rollout.state_file: required.*gama-ab"):
        RouterConfig.model_validate(cfg)


def test_ramp_steps_must_rise() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ramp: steps must rise"):
        experiment(ramp=[0.5, 0.2])
    with pytest.raises(ValidationError, match="ramp"):
        experiment(ramp=[0.0, 0.5])
