"""The rollout state and its rule: atomic writes, the decisions and their numbers, manual
actions, a controller that resumes from the state, and a replica that keeps the last good
state (and says so) when the file goes bad."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from gamaserving.router.v1 import router_pb2 as rpb
from router.config import ExperimentSettings
from router.experiments.results import ArmResults, report
from router.rollout.controller import RolloutController, manual
from router.rollout.decide import decide, judge, start
from router.rollout.state import HISTORY_LIMIT, Decision, RolloutState, StateError, parse_state
from router.rollout.store import CONFIGMAP_KEY, ConfigMapStore, FileStore
from router.server import StartupError
from tests.router.conftest import base_config, live_router
from tests.support.experiments import applied, arm
from tests.support.fault_server import fault_server


def experiment(**extra: Any) -> ExperimentSettings:
    return ExperimentSettings.model_validate(
        {
            "name": "e",
            "seed": "s1",
            "coverage": 0.1,
            "ramp": [0.5, 1.0],
            "auto_rollback": True,
            "min_samples": 50,
            "arms": [
                {"name": "control", "model": "a", "weight": 0.5},
                {"name": "candidate", "model": "b", "weight": 0.5},
            ],
            "guardrails": [{"metric": "error_rate", "max_absolute_increase": 0.01}],
            **extra,
        }
    )


def healthy(n: int) -> dict[str, ArmResults]:
    return {"control": arm(n, 100), "candidate": arm(n, 100, seed=1)}


def test_the_rule_ramps_on_fresh_healthy_samples_and_rolls_back_on_a_guardrail() -> None:
    e = experiment()
    phase, _ = start(e, 0.0)
    assert (phase.coverage, phase.status) == (0.1, "ramping")
    same, nothing = decide(e, phase, report(e, healthy(40)), 1.0)
    assert nothing is None and same == phase  # too few samples
    phase, ramp = decide(e, phase, report(e, healthy(60)), 2.0)
    assert ramp is not None and (ramp.action, ramp.from_coverage, ramp.to_coverage) == (
        "ramp",
        0.1,
        0.5,
    )
    assert ramp.counts == {"control": 60, "candidate": 60} and phase.marks == ramp.counts
    # 60 more per arm are needed since the last step (the marks), not 60 in all.
    held, nothing = decide(e, phase, report(e, healthy(100)), 3.0)
    assert nothing is None and held.coverage == 0.5
    phase, ramp = decide(e, phase, report(e, healthy(120)), 4.0)
    assert ramp is not None and phase.coverage == 1.0 and phase.status == "steady"
    failing = {"control": arm(2000, 100), "candidate": arm(2000, 100, error_rate=0.2, seed=2)}
    phase, rollback = decide(e, phase, report(e, failing), 5.0)
    assert rollback is not None and rollback.action == "rollback" and rollback.reasons
    assert (phase.coverage, phase.status) == (0.0, "rolled_back")
    assert decide(e, phase, report(e, healthy(5000)), 6.0) == (phase, None)  # terminal


def test_a_paused_phase_gets_no_decision() -> None:
    e = experiment()
    phase, _ = start(e, 0.0)
    paused = phase.model_copy(update={"paused": True})
    failing = {"control": arm(2000, 100), "candidate": arm(2000, 100, error_rate=0.2, seed=2)}
    assert decide(e, paused, report(e, failing), 1.0) == (paused, None)


def test_every_hold_says_why() -> None:
    e = experiment()
    phase, _ = start(e, 0.0)
    _, nothing, why = judge(e, phase, report(e, healthy(40)), 1.0)
    assert nothing is None
    assert why == (
        "waiting for 50 fresh requests per arm since the last step (have control 40, candidate 40)"
    )
    paused = phase.model_copy(update={"paused": True})
    assert "paused by hand" in judge(e, paused, report(e, healthy(60)), 1.0)[2]
    lopsided = {"control": arm(1000, 100), "candidate": arm(700, 100, seed=1)}
    assert "sample-ratio mismatch" in judge(e, phase, report(e, lopsided), 1.0)[2]
    top = phase.model_copy(update={"coverage": 1.0})
    assert judge(e, top, report(e, healthy(60)), 1.0)[2] == "no ramp step above coverage 1"
    _, ramp, why = judge(e, phase, report(e, healthy(60)), 2.0)
    assert ramp is not None and why == ""


def test_writes_are_atomic_and_the_history_is_bounded(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state" / "rollout.json")
    assert store.read() == RolloutState()  # nothing written yet
    e = experiment()
    phase, first = start(e, 0.0)
    state = RolloutState().with_phase(phase, first)
    for i in range(HISTORY_LIMIT + 5):
        state = state.with_phase(phase, first.model_copy(update={"at": float(i)}))
    store.write(state)
    assert [p.name for p in store.path.parent.iterdir()] == ["rollout.json"]  # no temp left
    back = store.read()
    assert back == state and len(back.history) == HISTORY_LIMIT
    assert back.history[-1].at == HISTORY_LIMIT + 4
    with pytest.raises(StateError, match="not valid JSON"):
        parse_state("{", "f")
    with pytest.raises(StateError, match=r"phases.0.coverage"):
        parse_state(json.dumps({"phases": [{"experiment": "e", "seed": "s", "coverage": 2}]}), "f")


def test_manual_actions_are_recorded_with_who_did_them(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "rollout.json")
    e = experiment()
    override = manual(store, e, "override", "alice", 0.25, "hold at 25%")
    assert (override.from_coverage, override.to_coverage, override.by) == (0.1, 0.25, "alice")
    phase = store.read().phase("e", "s1")
    assert phase is not None and phase.paused and phase.coverage == 0.25
    manual(store, e, "resume", "bob")
    state = store.read()
    assert [d.action for d in state.history] == ["override", "resume"]
    assert state.phase("e", "s1").paused is False  # type: ignore[union-attr]


class Fleet:
    """A StatsSource with fixed numbers: the controller's collaborator, not under test."""

    def __init__(self) -> None:
        self.numbers: dict[str, ArmResults] = {}

    def describe(self) -> str:
        return "fixed"

    async def arms(
        self, experiment: ExperimentSettings, outcomes: Sequence[str]
    ) -> dict[str, ArmResults]:
        return self.numbers


async def test_a_restarted_controller_resumes_from_the_state(tmp_path: Path) -> None:
    cfg_path = tmp_path / "router.yaml"
    cfg = base_config(
        {"a": ["127.0.0.1:1"], "b": ["127.0.0.1:2"]},
        embed={"primary": "a", "experiment": experiment().model_dump(mode="json")},
    )
    cfg["rollout"] = {"state_file": "rollout.json"}
    cfg_path.write_text(yaml.safe_dump(cfg))
    store = FileStore(tmp_path / "rollout.json")
    fleet = Fleet()
    fleet.numbers = healthy(60)
    first = RolloutController(cfg_path, fleet, store)
    assert [d.action for d in (await first.evaluate()).decisions] == ["start", "ramp"]
    again = RolloutController(cfg_path, fleet, store)
    assert (await again.evaluate()).decisions == []  # same numbers: no fresh samples
    fleet.numbers = healthy(120)
    (ramp,) = (await again.evaluate()).decisions
    assert (ramp.from_coverage, ramp.to_coverage) == (0.5, 1.0)


def test_the_configmap_store_patches_one_key() -> None:
    calls: list[tuple[str, Any]] = []

    class Api:  # the Kubernetes API server's client: a collaborator
        data: dict[str, str] | None = None

        def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
            calls.append(("read", (namespace, name)))
            return SimpleNamespace(data=self.data)

        def patch_namespaced_config_map(self, name: str, namespace: str, body: Any) -> None:
            calls.append(("patch", (namespace, name, body)))
            self.data = body["data"]

    store = ConfigMapStore("router-rollout-state", "gama", Api())
    assert store.read() == RolloutState()  # created empty by the manifests
    e = experiment()
    phase, first = start(e, 0.0)
    store.write(RolloutState().with_phase(phase, first))
    (_, (namespace, name, body)) = calls[-1]
    assert (namespace, name, list(body["data"])) == (
        "gama",
        "router-rollout-state",
        [CONFIGMAP_KEY],
    )
    assert store.read().phase("e", "s1") == phase


async def test_a_bad_state_file_keeps_the_last_good_one_and_raises_an_alert(
    tmp_path: Path,
) -> None:
    state_file = tmp_path / "rollout.json"
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        e = experiment(min_samples=10)
        cfg = base_config(
            {"a": [a], "b": [b]}, embed={"primary": "a", "experiment": e.model_dump(mode="json")}
        )
        cfg["rollout"] = {"state_file": str(state_file), "poll_seconds": 0.05}
        cfg["alerting"] = {"evaluation_seconds": 0.05}
        phase, first = start(e, 0.0)
        FileStore(state_file).write(
            RolloutState().with_phase(phase.model_copy(update={"coverage": 0.5}), first)
        )
        async with live_router(cfg, tmp_path) as router:
            assert (await applied(router, 0.5)).coverage_source == "rollout"
            state_file.write_text('{"phases": [{"experiment": "e"')  # half a file
            for _ in range(200):
                alerts = {
                    a.name for a in (await router.admin.ListAlerts(rpb.ListAlertsRequest())).alerts
                }
                if "RolloutStateInvalid" in alerts:
                    break
                await asyncio.sleep(0.05)
            assert "RolloutStateInvalid" in alerts
            assert "not valid JSON" in router.core.policy.state_error
            assert (await applied(router, 0.5)).coverage == 0.5  # the last good state
        # Without a last good state, a replica refuses to start rather than guess.
        with pytest.raises(StartupError, match=r"rollout\.state_file"):
            async with live_router(cfg, tmp_path):
                pass


def test_decisions_carry_their_numbers() -> None:
    d = Decision(
        at=1.0, experiment="e", seed="s", action="ramp", from_coverage=0.1, to_coverage=0.5
    )
    assert d.by == "controller" and d.counts == {} and d.srm_p_value is None


async def test_get_assignment_refuses_bad_requests_precisely(tmp_path: Path) -> None:
    import grpc

    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        e = experiment(ramp=[], auto_rollback=False)
        cfg = base_config(
            {"a": [a], "b": [b]},
            embed={"primary": "a", "experiment": e.model_dump(mode="json")},
            tag={"primary": "a"},
        )
        async with live_router(cfg, tmp_path) as router:
            cases = [
                (rpb.GetAssignmentRequest(user_ids=["u"]), grpc.StatusCode.INVALID_ARGUMENT),
                (
                    rpb.GetAssignmentRequest(task=rpb.TASK_EMBED, user_ids=["u"] * 10_001),
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
                (rpb.GetAssignmentRequest(task=rpb.TASK_TAG), grpc.StatusCode.NOT_FOUND),
            ]
            for request, code in cases:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await router.admin.GetAssignment(request)
                assert info.value.code() == code and info.value.details()
            ok = await router.admin.GetAssignment(
                rpb.GetAssignmentRequest(task=rpb.TASK_EMBED, user_ids=["u1", "u2"])
            )
            assert [x.user_id for x in ok.assignments] == ["u1", "u2"] and ok.coverage == 0.1


def _rollout_config(tmp_path: Path) -> Path:
    """A router configuration whose experiment `e` the rollout CLI acts on."""
    cfg = base_config(
        {"a": ["127.0.0.1:1"], "b": ["127.0.0.1:2"]},
        embed={"primary": "a", "experiment": experiment().model_dump(mode="json")},
    )
    cfg["rollout"] = {"state_file": "rollout.json"}
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_rollout_cli_names_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import main

    path = _rollout_config(tmp_path)
    base = ["rollout", "--config", str(path)]
    assert main([*base, "--set", "e=abc"]) == 2
    assert "expected EXPERIMENT=COVERAGE" in capsys.readouterr().err
    assert main([*base, "--set", "e=1.5"]) == 2
    assert "within [0, 1]" in capsys.readouterr().err
    assert main([*base, "--pause", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert main([*base, "--results", "mysql://me@db/x"]) == 2
    assert "unsupported database 'mysql'" in capsys.readouterr().err
    assert main([*base, "--set", "e=0.3"]) == 0
    assert FileStore(tmp_path / "rollout.json").read().phase("e", "s1").coverage == 0.3  # type: ignore[union-attr]


def test_a_manual_rollback_says_who_and_holds_until_the_seed_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.alerts.settings import BUILT_IN_RULES
    from router.cli import main

    path = _rollout_config(tmp_path)
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    base = ["rollout", "--config", str(path)]
    assert main([*base, "--set", "e=0"]) == 0
    assert "e (seed s1): rolled back by hand by alice, coverage 0.1 -> 0" in capsys.readouterr().out
    state = FileStore(tmp_path / "rollout.json").read()
    assert state.rolled_back_by("e", "s1") == "alice (by hand)"
    # What the router's alert says of it.
    (rule,) = [r for r in BUILT_IN_RULES if r.name == "ExperimentRolledBack"]
    assert rule.summary.format(experiment="e", by=state.rolled_back_by("e", "s1")) == (
        "experiment e was rolled back by alice (by hand)"
    )

    # A rolled-back phase does not come back by a plain --set ...
    assert main([*base, "--set", "e=0.5"]) == 3
    err = capsys.readouterr().err
    assert "stays at coverage 0 until the seed changes" in err and "--resume-rolled-back" in err
    assert FileStore(tmp_path / "rollout.json").read().phase("e", "s1").coverage == 0  # type: ignore[union-attr]
    # ... only when asked to, with a warning.
    assert main([*base, "--set", "e=0.5", "--resume-rolled-back"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "coverage 0 -> 0.5" in captured.out
    phase = FileStore(tmp_path / "rollout.json").read().phase("e", "s1")
    assert phase is not None and phase.coverage == 0.5 and phase.status == "ramping"

    # The controller's own rollback names the controller.
    decided = RolloutState().with_phase(
        start(experiment(), 0.0)[0].model_copy(update={"coverage": 0.0, "status": "rolled_back"}),
        Decision(at=1.0, experiment="e", seed="s1", action="rollback", from_coverage=0.1,
                 to_coverage=0.0),
    )  # fmt: skip
    assert decided.rolled_back_by("e", "s1") == "controller (guardrails failed)"
