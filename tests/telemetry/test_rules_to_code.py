"""From the rules to the code: every series that k8s/monitoring's alert rules and Grafana
dashboard query is one the processes emit, with the labels the queries use. The router, a GAMA
model server (a GPU faked by a stand-in NVML) and the rollout controller are built here; every
instrument they declare is touched once, and their registries are read as Prometheus would."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gamaserving.telemetry import Telemetry
from router.rollout.controller import ControllerMetrics
from router.rollout.state import Decision, PhaseState, RolloutState
from tests.modelserver.conftest import live_server
from tests.router.conftest import base_config, live_router
from tests.support.fault_server import fault_server
from tests.support.prom import ROOT

MONITORING = ROOT / "k8s" / "monitoring"
# Labels Prometheus adds to every scraped series, and the histogram bucket bound.
TARGET_LABELS = {"job", "instance", "le"}
FUNCTIONS = {"sum", "count", "max", "min", "avg", "by", "on", "without", "rate", "increase",
             "histogram_quantile", "group_left", "label_replace", "up", "rate_interval",
             "and", "or", "unless", "bool", "offset"}  # fmt: skip


def _fake_nvml() -> object:
    spec = importlib.util.spec_from_file_location(
        "pynvml", ROOT / "tests" / "support" / "nvml" / "pynvml.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _queries() -> list[tuple[str, str, set[str]]]:
    """(where, PromQL, labels its text names: `by (...)`, matchers, `$labels.x`)."""
    found = []
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            text = json.dumps(rule.get("annotations", {}))
            named = set(re.findall(r"\$labels\.(\w+)", text))
            found.append((f"alert {rule['alert']}", rule["expr"], named))
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            named = set(re.findall(r"{{\s*(\w+)\s*}}", target.get("legendFormat", "")))
            found.append((f"panel {panel['title']}", target["expr"], named))
    return found


def _names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    labels = set()
    for group in re.findall(r"\b(?:by|without|on)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!=|!~|=)", matchers))
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", expr)
    bare = re.sub(r"\b(?:by|without|on)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\b\d[\d.e+]*\b", "", bare)
    names = {w for w in re.findall(r"[a-z_][a-z0-9_]*", bare) if w not in FUNCTIONS}
    return names, labels


def _emitted(telemetry: Telemetry) -> dict[str, set[str]]:
    """Series name -> label names, as Prometheus scrapes them from this registry."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(telemetry.registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _touch_every_instrument(telemetry: Telemetry) -> None:
    """One observation in every hot-path instrument it made, so that each series shows."""
    for tally in telemetry.tallies:
        tally.add(*("x" for _ in tally.keys))
    for histogram in telemetry.histograms:
        histogram.record(0.01, *("x" for _ in histogram.keys))


async def test_every_queried_series_is_emitted_with_its_labels(
    tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    emitted: dict[str, set[str]] = {}
    async with fault_server("m") as (_, address):
        cfg = base_config({"m": [address]}, tag={"primary": "m"})
        cfg["telemetry"] = {"prometheus_host": "127.0.0.1", "prometheus_port": 0}
        async with (
            live_router(cfg, tmp_path) as router,
            live_server(tiny_models / "gama", settings={"metrics_port": 0}) as model,
        ):
            controller = Telemetry("rollout-controller")
            metrics = ControllerMetrics(controller)
            phase = PhaseState(experiment="e", seed="s", coverage=0.0, status="rolled_back")
            decision = Decision(at=1.0, experiment="e", seed="s", action="rollback",
                                from_coverage=0.5, to_coverage=0.0)  # fmt: skip
            metrics.observe(lambda: RolloutState(phases=[phase], history=[decision]))
            metrics.decision(decision)
            metrics.evaluation("ok")
            router.server.metrics.reload(True)
            router.server.metrics.anomaly("m", "latency_ms")
            assert model.server.telemetry is not None
            for telemetry in (router.server.telemetry, model.server.telemetry, controller):
                _touch_every_instrument(telemetry)
                for name, labels in _emitted(telemetry).items():
                    emitted.setdefault(name, set()).update(labels)
            controller.shutdown()
    assert "hw_gpu_memory_limit_bytes" in emitted  # the stand-in NVML was read

    problems = []
    for where, expr, named in _queries():
        names, labels = _names_and_labels(expr)
        missing = sorted(n for n in names if n not in emitted)
        if missing:
            problems.append(f"{where}: no process emits {missing} ({expr.strip()})")
            continue
        have = set().union(*(emitted[n] for n in names)) | TARGET_LABELS
        unknown = sorted((labels | named) - have)
        if unknown:
            problems.append(f"{where}: labels {unknown} on none of {sorted(names)}")
    assert not problems, "\n".join(problems)
