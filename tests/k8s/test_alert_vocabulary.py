"""One alert vocabulary: the router's built-in rules and the cluster's Prometheus rules give
the same condition the same name, severity and labels, so one Alertmanager route, silence or
inhibition covers both; each rule only one side can see lives on that side alone, and
docs/observability.md's table says where each is evaluated."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from router.alerts.settings import BUILT_IN_RULES, AlertingSettings

ROOT = Path(__file__).resolve().parents[2]
FLEET_ONLY = {"ReplicaDown"}  # a replica cannot see its own death
ROUTER_ONLY = {"RolloutStateInvalid"}  # a replica's own read of its mounted state file


def prometheus_rules() -> dict[str, dict]:  # type: ignore[type-arg]
    doc = yaml.safe_load((ROOT / "k8s" / "monitoring" / "alerts.yaml").read_text())
    return {r["alert"]: r for group in doc["groups"] for r in group["rules"]}


def test_names_and_severities_agree() -> None:
    router = {r.name: r.severity for r in BUILT_IN_RULES}
    prom = {name: r["labels"]["severity"] for name, r in prometheus_rules().items()}
    assert set(router) - set(prom) == ROUTER_ONLY
    assert set(prom) - set(router) == FLEET_ONLY
    mismatched = {n: (router[n], prom[n]) for n in set(router) & set(prom) if router[n] != prom[n]}
    assert not mismatched, f"severity differs (router, prometheus): {mismatched}"


def test_shared_rules_carry_the_same_labels() -> None:
    """The labels a router rule names (its summary's placeholders) are what the Prometheus
    rule aggregates by, besides the target's job and instance."""
    prom = prometheus_rules()
    for rule in BUILT_IN_RULES:
        if rule.name not in prom:
            continue
        wanted = set(re.findall(r"{(\w+)", rule.summary)) - {"value"}
        grouped = set()
        for found in re.findall(r"by \(([^)]*)\)", prom[rule.name]["expr"]):
            grouped |= {label.strip() for label in found.split(",")}
        assert wanted <= grouped - {"le"}, (rule.name, wanted, grouped)


def test_the_default_inhibition_names_real_rules() -> None:
    names = {r.name for r in BUILT_IN_RULES}
    for inhibition in AlertingSettings().inhibit:
        assert {inhibition.source, inhibition.target} <= names


def test_docs_table_says_where_each_alert_is_evaluated() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Za-z]+)` \| ([a-z, +]+) \|", doc, re.M))
    router = {r.name for r in BUILT_IN_RULES}
    prom = set(prometheus_rules())
    for name in router | prom:
        where = {"router" if name in router else "", "prometheus" if name in prom else ""} - {""}
        assert name in rows, f"docs/observability.md has no row for {name}"
        assert set(rows[name].replace("+", ",").replace(" ", "").split(",")) == where, name
