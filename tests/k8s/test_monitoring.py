"""k8s/monitoring: the alerting rules pass promtool's checks and unit tests; the dashboard is
valid JSON whose every query uses documented metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.prom import ROOT, documented, family

MONITORING = ROOT / "k8s" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (apt-get install prometheus; .ci/run installs it)"
)
PROMQL_WORDS = {
    "label_replace",
    "up",  # Prometheus' own scrape-health series
    "sum",
    "count",
    "max",
    "min",
    "by",
    "on",
    "rate",
    "increase",
    "histogram_quantile",
    "group_left",
    "le",
    "model",
    "arm",
    "reason",
    "check",
    "endpoint",
    "state",
    "instance",
    "hw_id",
    "job",
    "measure",
    "primary_model",
    "shadow_model",
    "from_model",
    "signal",
    "outcome",
    "process_memory_type",
    "rate_interval",
    "experiment",
    "gen_ai_request_model",
}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\b\d[\d.e+]*\b", "", expr)  # numbers such as 8e9
    return {w for w in re.findall(r"[a-z_][a-z0-9_]*", expr) if w not in PROMQL_WORDS}


@needs_promtool
def test_alert_rules_check_and_unit_tests() -> None:
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "rules", "alerts.yaml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    count = sum(len(group["rules"]) for group in rules["groups"])
    assert f"{count} rules found" in check.stdout
    tests = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts.test.yaml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


@needs_promtool
def test_promtool_catches_a_broken_rule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert PROMTOOL is not None
    (tmp_path / "bad.yaml").write_text(
        "groups:\n- name: x\n  rules:\n  - alert: Broken\n    expr: sum by (model (x)\n"
    )
    bad = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "bad.yaml")], capture_output=True, text=True
    )
    assert bad.returncode != 0


def test_alert_rules_and_dashboard_use_documented_metrics() -> None:
    known = documented()
    rules = (MONITORING / "alerts.yaml").read_text()
    exprs = re.findall(r"expr: \|?\n?((?:.+\n)+?)\s+(?:for|labels):", rules)
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) > 15
    used = {family(name) for e in exprs for name in metric_names(e)}
    assert used and not used - known, f"not documented: {sorted(used - known)}"


def test_dashboard_has_the_operators_panels() -> None:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for needle in (
        "request rate",
        "p50 / p95 / p99",
        "fallback rate",
        "quality failures",
        "circuit",
        "queue depth",
        "batch size",
        "gpu",
        "time to first token",
        "kv budget",
    ):
        assert needle in titles, needle
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(
        p["targets"] and p["datasource"]["type"] == "prometheus" for p in dashboard["panels"]
    )
