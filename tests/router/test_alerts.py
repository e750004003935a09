"""The alert system with an injected clock: pending -> firing, resolve, dedupe, repeat,
inhibition, rate limit, persistence across a restart, webhook delivery to a real local HTTP
server (a failing receiver is retried without blocking anything), and the admin API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import grpc
import pytest
import yaml

from gamaserving.router.v1 import router_pb2 as rpb
from router.alerts.engine import Alert, AlertEngine, AlertState
from router.alerts.history import AlertHistory, AlreadyAcknowledged
from router.alerts.service import AlertService
from router.alerts.settings import AlertingSettings, AlertRule, Signal
from tests.router.conftest import base_config, live_router
from tests.support.alert_signals import Signals
from tests.support.audio import wav
from tests.support.fakes import Clock
from tests.support.fault_server import fault_server
from tests.support.processes import free_port
from tests.support.receiver import Receiver

RULES = [
    AlertRule(
        name="ModelUnhealthy",
        signal="model_unhealthy",
        threshold=0.5,
        for_seconds=60,
        severity="critical",
        summary="no endpoint of {model}",
    ),
    AlertRule(
        name="FailoverRateHigh",
        signal="fallback_rate",
        threshold=0.05,
        summary="{value:.0%} from {model}",
    ),
]


def engine(**kw: Any) -> tuple[AlertEngine, Clock, Signals]:
    clock, signals = Clock(1_000.0), Signals()
    settings = AlertingSettings(rules=RULES, repeat_seconds=600, **kw)
    return AlertEngine(settings, signals, clock), clock, signals


def test_pending_then_firing_then_resolved() -> None:
    e, clock, s = engine()
    s.values["model_unhealthy"] = [({"model": "gama"}, 1.0)]
    assert e.evaluate() == [] and [a.state for a in e.transitions] == [AlertState.PENDING]
    clock.now += 59
    assert e.evaluate() == []
    clock.now += 1
    (note,) = e.evaluate()
    assert note.alert.state is AlertState.FIRING and note.alert.summary == "no endpoint of gama"
    s.values["model_unhealthy"] = [({"model": "gama"}, 0.0)]
    clock.now += 10
    (note,) = e.evaluate()
    assert note.alert.state is AlertState.RESOLVED and note.alert.resolved_at == clock.now


def test_pending_that_clears_never_notifies() -> None:
    e, clock, s = engine()
    s.values["model_unhealthy"] = [({"model": "gama"}, 1.0)]
    e.evaluate()
    s.values["model_unhealthy"] = []
    clock.now += 30
    assert e.evaluate() == [] and not e.active


def test_dedupe_and_repeat() -> None:
    e, clock, s = engine()
    s.values["fallback_rate"] = [
        ({"model": "gama"}, 0.2),
        ({"model": "gama"}, 0.3),
        ({"model": "wav2vec2"}, 0.1),
    ]
    first = e.evaluate()
    assert sorted(n.alert.labels["model"] for n in first) == [
        "gama",
        "wav2vec2",
    ]  # same labels: one alert
    for _ in range(5):
        clock.now += 60
        assert e.evaluate() == []
    clock.now += 300
    repeats = e.evaluate()
    assert len(repeats) == 2 and all(n.repeat for n in repeats)


def test_inhibition_silences_the_failover_alert_a_dead_model_explains() -> None:
    e, clock, s = engine()
    s.values["model_unhealthy"] = [({"model": "gama"}, 1.0)]
    e.evaluate()
    clock.now += 60
    assert [n.alert.name for n in e.evaluate()] == ["ModelUnhealthy"]
    s.values["fallback_rate"] = [({"model": "gama"}, 0.5), ({"model": "wav2vec2"}, 0.5)]
    clock.now += 5
    notes = e.evaluate()
    assert [(n.alert.name, n.alert.labels["model"]) for n in notes] == [
        ("FailoverRateHigh", "wav2vec2")
    ]
    assert (
        sum(a.alert.name == "FailoverRateHigh" for a in e.active.values()) == 2
    )  # tracked, not notified


def test_rate_limit_drops_notifications_not_history() -> None:
    e, clock, s = engine(max_notifications_per_minute=2)
    s.values["fallback_rate"] = [({"model": f"m{i}"}, 0.5) for i in range(5)]
    assert len(e.evaluate()) == 2 and e.dropped == 3
    assert sum(a.state is AlertState.FIRING for a in e.transitions) == 5
    s.values["fallback_rate"] = []
    clock.now += 30
    assert e.evaluate() == [] and e.dropped == 8  # still within the minute
    s.values["fallback_rate"] = [({"model": "m0"}, 0.5)]
    clock.now += 31
    assert len(e.evaluate()) == 1  # a new minute


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.close()


async def test_webhook_delivers_alertmanager_json_with_retries_off_the_evaluation_path(
    receiver: Receiver,
) -> None:
    clock, signals = Clock(1_000.0), Signals()
    settings = AlertingSettings(rules=RULES, webhook={"url": receiver.url, "attempts": 4})
    service = AlertService(settings, signals, clock)
    assert service.webhook is not None
    service.webhook.backoff = 0.01
    signals.values["fallback_rate"] = [({"model": "gama"}, 0.25)]
    (note,) = service.evaluate()
    assert receiver.calls == 0 and service.queue.qsize() == 1  # evaluation only queues
    await service.drain()
    assert receiver.calls == 3 and service.webhook.delivered == 1  # two 500s, then delivered
    (body,) = receiver.bodies
    assert (
        body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "gama-serving"
    )
    (alert,) = body["alerts"]
    assert alert["labels"] == {
        "alertname": "FailoverRateHigh",
        "severity": "warning",
        "model": "gama",
    }
    assert (
        alert["fingerprint"] == note.alert.id and alert["annotations"]["summary"] == "25% from gama"
    )
    assert alert["startsAt"].endswith("Z")
    await service.stop()


async def test_a_failing_receiver_never_loses_the_alert(tmp_path: Path) -> None:
    dead = Receiver(failures=100)
    try:
        settings = AlertingSettings(rules=RULES, webhook={"url": dead.url, "attempts": 3})
        signals = Signals()
        service = AlertService(settings, signals, Clock(1_000.0))
        assert service.webhook is not None
        service.webhook.backoff = 0.01
        signals.values["fallback_rate"] = [({"model": "gama"}, 0.9)]
        service.evaluate()
        await service.drain()
        assert dead.calls == 3 and service.webhook.failed == 1
        assert [a.name for a in service.list(include_resolved=True, limit=0)] == [
            "FailoverRateHigh"
        ]
        await service.stop()
    finally:
        dead.close()


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "alerts.db")
    clock, signals = Clock(1_000.0), Signals()
    settings = AlertingSettings(rules=RULES, history_path=path, history_size=10)
    first = AlertService(settings, signals, clock)
    signals.values["fallback_rate"] = [({"model": "gama"}, 0.5)]
    first.evaluate()
    signals.values["fallback_rate"] = []
    clock.now += 10
    first.evaluate()
    signals.values["fallback_rate"] = [({"model": "wav2vec2"}, 0.5)]
    clock.now += 10
    (firing,) = first.evaluate()
    assert first.acknowledge(firing.alert.id, "oncall") is not None
    await first.stop()

    second = AlertService(settings, Signals(), clock)
    alerts = second.list(include_resolved=True, limit=0)
    assert [(a.name, a.labels["model"], a.state) for a in alerts] == [
        ("FailoverRateHigh", "wav2vec2", AlertState.FIRING),
        ("FailoverRateHigh", "gama", AlertState.RESOLVED),
    ]
    assert alerts[0].acknowledged_by == "oncall"
    assert [a.labels["model"] for a in second.list(include_resolved=False, limit=0)] == ["wav2vec2"]
    await second.stop()


async def test_admin_lists_and_acknowledges_alerts_of_a_live_router(tmp_path: Path) -> None:
    cfg = base_config({"m": [f"127.0.0.1:{free_port()}"]}, tag={"primary": "m"})
    cfg["alerting"] = {
        "evaluation_seconds": 0.1,
        "rules": [
            {
                "name": "ModelUnhealthy",
                "signal": "model_unhealthy",
                "threshold": 0.5,
                "severity": "critical",
                "summary": "no endpoint of {model}",
            },
            {"name": "ConfigReloadFailed", "signal": "config_reload_failures", "threshold": 0},
        ],
    }
    async with live_router(cfg, tmp_path, metadata_wait=0.1) as router:
        alerts: list[Any] = []
        for _ in range(50):
            alerts = list((await router.admin.ListAlerts(rpb.ListAlertsRequest())).alerts)
            if alerts:
                break
            await asyncio.sleep(0.1)
        (alert,) = alerts
        assert (alert.name, alert.state, alert.severity, dict(alert.labels)) == (
            "ModelUnhealthy",
            "firing",
            "critical",
            {"model": "m"},
        )
        acked = await router.admin.AcknowledgeAlert(
            rpb.AcknowledgeAlertRequest(id=alert.id, by="oncall")
        )
        assert acked.alert.acknowledged
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await router.admin.AcknowledgeAlert(rpb.AcknowledgeAlertRequest(id="nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await router.admin.ListAlerts(rpb.ListAlertsRequest(limit=-1))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in (
            info.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await router.admin.AcknowledgeAlert(rpb.AcknowledgeAlertRequest())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        router.path.write_text(yaml.safe_dump({**cfg, "routes": {"tag": {"primary": "missing"}}}))
        assert not await router.server.reload()
        for _ in range(50):
            names = {
                a.name for a in (await router.admin.ListAlerts(rpb.ListAlertsRequest())).alerts
            }
            if "ConfigReloadFailed" in names:
                break
            await asyncio.sleep(0.1)
        assert names == {"ModelUnhealthy", "ConfigReloadFailed"}


def test_a_change_before_the_first_evaluation_counts() -> None:
    from collections import Counter

    from router.alerts.signals import Windowed

    now = [0.0]
    failures = [0]
    reloads = Windowed(lambda: Counter({"failed": failures[0]}), 60.0, lambda: now[0])
    failures[0] = 1  # a reload fails a second after start, before any evaluation
    now[0] = 5.0
    assert reloads.delta() == Counter({"failed": 1})
    now[0] = 70.0  # out of the window: the change is old news
    reloads.delta()
    now[0] = 75.0
    assert reloads.delta() == Counter()


def test_the_first_acknowledgement_stands(tmp_path: Path) -> None:
    history = AlertHistory(10, tmp_path / "alerts.sqlite")
    history.record(
        Alert("a1", "CircuitOpen", {"model": "m"}, "warning", AlertState.FIRING, "open", 1.0, 5.0)
    )
    assert history.acknowledge("a1", "alice") is not None
    with pytest.raises(AlreadyAcknowledged, match="already acknowledged by alice"):
        history.acknowledge("a1", "bob")
    history.close()
    reopened = AlertHistory(10, tmp_path / "alerts.sqlite")
    assert [a.acknowledged_by for a in reopened.list(True, 0)] == ["alice"]
    reopened.close()


def test_a_failing_signal_silences_only_its_own_rule() -> None:
    e, clock, s = engine()
    s.values["model_unhealthy"] = [({"model": "gama"}, 1.0)]
    clock.now += 60
    e.evaluate()
    assert [a.name for a in e.firing()] == []  # pending since this pass
    clock.now += 60
    assert [n.alert.name for n in e.evaluate()] == ["ModelUnhealthy"]

    def broken(signal: str) -> list[tuple[dict[str, str], float]]:
        if signal == "model_unhealthy":
            raise RuntimeError("the health table is gone")
        return s(signal)

    e.source = broken
    s.values["fallback_rate"] = [({"model": "wav2vec2"}, 0.5)]
    notes = e.evaluate()
    # The other rule still fires; the failing one holds its alert (no false resolve) and is
    # reported as an alert of its own.
    assert sorted(n.alert.name for n in notes) == ["AlertRuleFailing", "FailoverRateHigh"]
    (failing,) = [n.alert for n in notes if n.alert.name == "AlertRuleFailing"]
    assert failing.labels == {"rule": "ModelUnhealthy", "signal": "model_unhealthy"}
    assert "alert rule ModelUnhealthy cannot be evaluated" in failing.summary
    assert {a.name for a in e.firing()} == {
        "ModelUnhealthy",
        "FailoverRateHigh",
        "AlertRuleFailing",
    }
    assert e.rule_failures == {"ModelUnhealthy": 1}

    # Mended: it resolves by its own reading, and AlertRuleFailing resolves.
    e.source = s
    s.values["model_unhealthy"] = [({"model": "gama"}, 0.0)]
    resolved = {n.alert.name for n in e.evaluate() if n.alert.state is AlertState.RESOLVED}
    assert resolved == {"ModelUnhealthy", "AlertRuleFailing"}


async def test_every_signal_reads_on_a_live_router(tmp_path: Path) -> None:
    """Each name a rule may give, read once from a live router with a model server behind it:
    a list of (labels, value), never an exception."""
    async with fault_server("m") as (_, address):
        cfg = base_config({"m": [address]}, tag={"primary": "m"})
        cfg["alerting"] = {"evaluation_seconds": 3600}
        async with live_router(cfg, tmp_path) as router:
            await router.all_serving()
            await router.process(rpb.TASK_TAG, wav(0.2), user_id="u1")
            service = router.server.alerts
            assert service is not None
            for signal in get_args(Signal):
                samples = service.engine.source(signal)
                assert isinstance(samples, list), signal
                for labels, value in samples:
                    assert all(isinstance(v, str) for v in labels.values()), (signal, labels)
                    assert isinstance(value, float), (signal, value)
            unhealthy = service.engine.source("model_unhealthy")
            assert unhealthy == [({"model": "m"}, 0.0)]
            assert service.engine.source("process_memory_bytes")[0][1] > 1e6
