"""Router alerts in a real Alertmanager on loopback: labels, Alertmanager's inhibition and
silences, resolution reaching its webhook receiver, and a live router whose model server dies
and comes back. Skipped with a message where prometheus-alertmanager is not installed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from router.alerts.service import AlertService
from router.alerts.settings import AlertingSettings, AlertRule
from tests.router.conftest import base_config, live_router
from tests.support.alert_signals import Signals
from tests.support.alertmanager import alertmanager, binary
from tests.support.fakes import Clock
from tests.support.fault_server import fault_server
from tests.support.processes import free_port
from tests.support.receiver import Receiver

needs_alertmanager = pytest.mark.skipif(
    binary() is None,
    reason="prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)",
)

RULES = [
    AlertRule(
        name="ModelUnhealthy",
        signal="model_unhealthy",
        threshold=0.5,
        severity="critical",
        summary="no endpoint of model {model} is serving",
    ),
    AlertRule(name="FailoverRateHigh", signal="fallback_rate", threshold=0.05),
    AlertRule(name="CircuitOpen", signal="circuit_open", threshold=0.5),
]


def _notified(receiver: Receiver, name: str, status: str) -> bool:
    return any(
        a["labels"]["alertname"] == name and a["status"] == status
        for body in receiver.bodies
        for a in body["alerts"]
    )


async def _until_notified(receiver: Receiver, name: str, status: str) -> None:
    for _ in range(300):
        if _notified(receiver, name, status):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the receiver never got {name} {status}: {receiver.bodies}")


def test_firing_alerts_are_resent_and_resolutions_sent_once() -> None:
    clock, signals = Clock(time.time()), Signals()
    settings = AlertingSettings(
        rules=RULES, alertmanagers=["http://127.0.0.1:9"], replica="r1", inhibit=[]
    )
    service = AlertService(settings, signals, clock, port=50051)
    client = service.alertmanager
    assert client is not None
    signals.values["model_unhealthy"] = [({"model": "gama"}, 1.0)]
    service.evaluate()
    (first,) = service.pushes.get_nowait()
    assert first["labels"] == {
        "alertname": "ModelUnhealthy",
        "severity": "critical",
        "replica": "r1",
        "model": "gama",
    }
    assert first["generatorURL"] == "grpc://r1:50051/gamaserving.router.v1.RouterAdmin/ListAlerts"
    clock.now += 30
    service.evaluate()
    assert service.pushes.empty()  # within resend_seconds
    clock.now += 31
    service.evaluate()
    (again,) = service.pushes.get_nowait()
    assert again["startsAt"] == first["startsAt"] and again["endsAt"] > first["endsAt"]
    signals.values["model_unhealthy"] = []
    clock.now += 1
    service.evaluate()
    (resolved,) = service.pushes.get_nowait()
    assert resolved["endsAt"] < again["endsAt"]
    service.evaluate()
    assert service.pushes.empty()  # a resolution is posted once


@needs_alertmanager
async def test_alerts_in_alertmanager_with_its_inhibition_and_silences(tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        async with alertmanager(tmp_path, receiver.url) as am:
            clock, signals = Clock(time.time()), Signals()
            settings = AlertingSettings(
                rules=RULES, alertmanagers=[am.url], replica="router-0", inhibit=[]
            )
            service = AlertService(settings, signals, clock, port=50051)
            signals.values["model_unhealthy"] = [({"model": "gama"}, 1.0)]
            signals.values["fallback_rate"] = [({"model": "gama"}, 0.5)]
            service.evaluate()
            await service.drain()
            found = await am.until(lambda a: len(a) == 2)
            by_name = {a["labels"]["alertname"]: a for a in found}
            unhealthy = by_name["ModelUnhealthy"]
            assert unhealthy["labels"] == {
                "alertname": "ModelUnhealthy",
                "severity": "critical",
                "model": "gama",
                "replica": "router-0",
            }
            assert unhealthy["annotations"]["summary"] == "no endpoint of model gama is serving"
            assert "router replica router-0" in unhealthy["annotations"]["description"]
            assert unhealthy["generatorURL"].startswith("grpc://router-0:50051/")
            assert unhealthy["status"]["state"] == "active"
            # Alertmanager's inhibition, not the router's: FailoverRateHigh is held back.
            assert by_name["FailoverRateHigh"]["status"]["inhibitedBy"]
            await _until_notified(receiver, "ModelUnhealthy", "firing")

            await am.silence({"alertname": "CircuitOpen"})
            signals.values["circuit_open"] = [({"model": "gama", "endpoint": "e1"}, 1.0)]
            service.evaluate()
            await service.drain()
            (silenced,) = await am.until(
                lambda a: bool(a) and a[0]["status"]["silencedBy"] != [], alertname="CircuitOpen"
            )
            assert silenced["status"]["state"] == "suppressed"

            signals.values["model_unhealthy"] = []
            service.evaluate()
            await service.drain()
            await _until_notified(receiver, "ModelUnhealthy", "resolved")
            # With its inhibitor gone, FailoverRateHigh is notified; the silenced alert never.
            await _until_notified(receiver, "FailoverRateHigh", "firing")
            assert not _notified(receiver, "CircuitOpen", "firing")
            assert service.alertmanager is not None and service.alertmanager.failed == 0
            await service.stop()
    finally:
        receiver.close()


@needs_alertmanager
async def test_a_dead_model_server_shows_in_alertmanager_and_resolves(tmp_path: Path) -> None:
    receiver = Receiver()
    port = free_port()
    try:
        async with alertmanager(tmp_path, receiver.url) as am:
            cfg: dict[str, Any] = base_config({"m": [f"127.0.0.1:{port}"]}, tag={"primary": "m"})
            cfg["alerting"] = {
                "evaluation_seconds": 0.1,
                "alertmanagers": [am.url],
                "alertmanager": {"resend_seconds": 1},
                "replica": "router-a",
                "rules": [r.model_dump() for r in RULES[:1]],
            }
            model = contextlib.AsyncExitStack()
            await model.enter_async_context(fault_server("m", port=port))
            async with live_router(cfg, tmp_path, metadata_wait=5) as router:
                assert router.server.alerts is not None
                await model.aclose()  # the model server goes away
                (alert,) = await am.until(lambda a: len(a) == 1, alertname="ModelUnhealthy")
                assert alert["labels"] == {
                    "alertname": "ModelUnhealthy",
                    "severity": "critical",
                    "model": "m",
                    "replica": "router-a",
                }
                await _until_notified(receiver, "ModelUnhealthy", "firing")
                async with fault_server("m", port=port):  # and comes back
                    await am.until(lambda a: a == [], alertname="ModelUnhealthy")
                    await _until_notified(receiver, "ModelUnhealthy", "resolved")
    finally:
        receiver.close()
