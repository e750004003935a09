"""Alert rules and alerting settings (the `alerting` section of the router configuration)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gamaserving.settings import ConfigPath, StrictSettings
from gamaserving.tls import ClientTls

Signal = Literal[
    "model_unhealthy",
    "fallback_rate",
    "circuit_open",
    "process_memory_bytes",
    "gpu_memory_ratio",
    "quality_failure_rate",
    "anomalies",
    "latency_p95_ms",
    "config_reload_failures",
    "experiment_rolled_back",
    "experiment_ramped",
    "rollout_state_invalid",
    "results_dropped",
    "results_set_aside",
    "request_ids_reused",
    "alert_rules_failing",
]


class AlertRule(StrictSettings):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    """Alert name (Alertmanager's alertname)."""
    signal: Signal
    """What is measured; each signal yields one value per label set (e.g. per model)."""
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float
    for_seconds: float = Field(0.0, ge=0)
    """How long the condition must hold before the alert fires (pending until then)."""
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    summary: str = ""
    """Text for notifications; {labels} and {value} are filled in."""
    description: str = ""
    """Longer text (Alertmanager's description annotation); empty: the rule written out."""


class Inhibition(StrictSettings):
    source: str
    """While an alert of this name fires ..."""
    target: str
    """... alerts of this name with the same `equal` labels are not notified."""
    equal: list[str] = Field(default_factory=list)


class WebhookSettings(StrictSettings):
    url: str = Field(pattern=r"^https?://")
    """Receives Alertmanager's webhook JSON (version 4) by POST."""
    timeout_seconds: float = Field(5.0, gt=0)
    attempts: int = Field(4, ge=1, le=20)
    """Tries per notification, with exponential backoff between them."""


class AlertmanagerSettings(StrictSettings):
    """How alerts are pushed to Alertmanager (`alerting.alertmanagers`), as Prometheus does."""

    timeout_seconds: float = Field(5.0, gt=0)
    """Per POST to one Alertmanager."""
    attempts: int = Field(3, ge=1, le=20)
    """Tries per POST, with jittered exponential backoff between them."""
    resend_seconds: float = Field(60.0, gt=0)
    """A firing alert is posted again this often (Prometheus' resend delay, 1 m). Each post
    carries endsAt = now + 4 x this, so Alertmanager resolves it itself if the router dies."""
    tls: ClientTls | None = None
    """CA, and client certificate for mutual TLS, for https:// Alertmanagers."""


BUILT_IN_RULES = [
    AlertRule(
        name="ModelUnhealthy",
        signal="model_unhealthy",
        threshold=0.5,
        for_seconds=30,
        severity="critical",
        summary="no endpoint of model {model} is serving",
    ),
    AlertRule(
        name="FailoverRateHigh",
        signal="fallback_rate",
        threshold=0.05,
        for_seconds=60,
        summary="{value:.0%} of requests fall back from {model}",
    ),
    AlertRule(
        name="CircuitOpen",
        signal="circuit_open",
        threshold=0.5,
        for_seconds=30,
        summary="circuit open for {model} at {endpoint}",
    ),
    AlertRule(
        name="ProcessMemoryHigh",
        signal="process_memory_bytes",
        threshold=8e9,
        for_seconds=300,
        summary="router memory at {value:.3g} bytes",
    ),
    AlertRule(
        name="GpuMemoryHigh",
        signal="gpu_memory_ratio",
        threshold=0.9,
        for_seconds=300,
        summary="GPU {hw_id} memory {value:.0%} full",
    ),
    AlertRule(
        name="QualityFailureRateHigh",
        signal="quality_failure_rate",
        threshold=0.05,
        for_seconds=60,
        summary="{value:.0%} of {model} outputs fail quality checks",
    ),
    AlertRule(
        name="AnomalyDetected",
        signal="anomalies",
        threshold=0,
        severity="info",
        summary="{value:g} anomalies in {signal} of {model}",
    ),
    AlertRule(
        name="LatencySloBreached",
        signal="latency_p95_ms",
        threshold=2000,
        for_seconds=60,
        summary="p95 routing latency of {model} at {value:.0f} ms",
    ),
    # The rollout controller decides; each replica raises what the state it applies shows,
    # and Prometheus raises the same from the controller's own metrics.
    AlertRule(
        name="ExperimentRolledBack",
        signal="experiment_rolled_back",
        threshold=0.5,
        severity="critical",
        summary="experiment {experiment} was rolled back by {by}",
    ),
    AlertRule(
        name="ExperimentRamped",
        signal="experiment_ramped",
        threshold=0.5,
        severity="info",
        summary="experiment {experiment} ramped to its next coverage step",
    ),
    AlertRule(
        name="RolloutStateInvalid",
        signal="rollout_state_invalid",
        threshold=0.5,
        severity="warning",
        summary="the rollout state file cannot be applied; the last good one is in force",
    ),
    AlertRule(
        name="ResultsDropped",
        signal="results_dropped",
        threshold=0,
        severity="warning",
        summary="{value:g} experiment events dropped: the results store was down past "
        "results.max_buffer",
    ),
    AlertRule(
        name="ResultsSetAside",
        signal="results_set_aside",
        threshold=0,
        severity="warning",
        summary="{value:g} experiment events refused by the results store on their own, kept "
        "as dead letters (router results dead-letters)",
    ),
    AlertRule(
        name="RequestIdsReused",
        signal="request_ids_reused",
        threshold=0,
        severity="warning",
        summary="{value:g} requests reused an earlier request's id: only the first counts in "
        "experiment results",
    ),
    AlertRule(
        name="ConfigReloadFailed",
        signal="config_reload_failures",
        threshold=0,
        severity="warning",
        summary="{value:g} configuration reloads rejected; the previous one is still served",
    ),
]


RULE_FAILING = AlertRule(
    name="AlertRuleFailing",
    signal="alert_rules_failing",
    threshold=0.5,
    severity="warning",
    summary="alert rule {rule} cannot be evaluated: its signal {signal} fails (see the router's "
    "log); its alerts hold as they were",
)
"""Raised by the engine itself for a rule whose signal raises: never configured, always on."""


class AlertingSettings(StrictSettings):
    enabled: bool = True
    evaluation_seconds: float = Field(5.0, gt=0)
    """How often rules are evaluated."""
    window_seconds: float = Field(300.0, gt=0)
    """Window of the rate signals (fallback and quality-failure rates, anomalies, reloads)."""
    repeat_seconds: float = Field(3600.0, gt=0)
    """A firing alert is notified again after this long."""
    max_notifications_per_minute: int = Field(60, ge=1)
    """Notifications beyond this are dropped (and counted); history keeps every transition."""
    history_size: int = Field(1000, ge=1)
    history_path: ConfigPath | None = None
    """SQLite file that keeps the history across restarts."""
    webhook: WebhookSettings | None = None
    alertmanagers: list[Annotated[str, Field(pattern=r"^https?://")]] = Field(default_factory=list)
    """Alertmanager base URLs (http[s]://host:port); every firing and resolved alert is posted
    to each one's /api/v2/alerts. Empty: alerts stay in the router (history, log, webhook)."""
    alertmanager: AlertmanagerSettings = AlertmanagerSettings()
    replica: str = ""
    """The `replica` label on every alert; empty: the host name (the pod's name in Kubernetes)."""
    generator_url: str = ""
    """generatorURL of each alert; empty: grpc://<replica>:<port> and the admin method that
    lists this replica's alerts."""
    rules: list[AlertRule] = Field(default_factory=lambda: list(BUILT_IN_RULES))
    inhibit: list[Inhibition] = Field(
        default_factory=lambda: [
            Inhibition(source="ModelUnhealthy", target="FailoverRateHigh", equal=["model"])
        ]
    )
