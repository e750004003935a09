"""The router's YAML configuration, validated; every error names its field."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gamaserving.settings import (
    BASE_DIR,
    ConfigPath,
    SettingsError,
    StrictSettings,
    field_errors,
    format_errors,
    read_mapping,
    validate_mapping,
)
from gamaserving.tls import ClientTls, ServerTls
from router.alerts.settings import AlertingSettings
from router.ids import MAX_ID_LENGTH

TaskName = Literal["transcribe", "tag", "embed", "describe"]

# Names the results store keeps in every row (models, experiments, seeds, arms): its columns'
# width, so that no configuration can make a row the store refuses.
Name = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class CircuitBreakerSettings(StrictSettings):
    """Per endpoint, over the last `window` calls (resilience4j's count-based window)."""

    window: int = Field(20, ge=2)
    """Calls in the sliding window."""
    min_calls: int = Field(5, ge=1)
    """Calls needed before the rates are judged."""
    failure_rate: float = Field(0.5, gt=0, le=1)
    """Failed share of the window that opens the circuit (quality failures count)."""
    slow_call_ms: float = Field(2000, gt=0)
    """A call slower than this is slow."""
    slow_call_rate: float = Field(0.8, gt=0, le=1)
    """Slow share of the window that opens the circuit."""
    open_seconds: float = Field(5.0, gt=0)
    """How long an open circuit refuses calls before half-opening."""
    half_open_probes: int = Field(3, ge=1)
    """Calls let through when half-open; all must succeed to close."""
    half_open_max_seconds: float = Field(30.0, gt=0)
    """Half-open that has not closed or reopened within this long opens again (a probe whose
    caller vanished without an outcome cannot hold the endpoint out of service)."""


class RetryBudgetSettings(StrictSettings):
    """Retries to other endpoints of the same model, as a share of requests (one layer only)."""

    ratio: float = Field(0.2, ge=0, le=1)
    """Retry tokens earned per request."""
    max_tokens: float = Field(10, ge=0)
    """Tokens kept at most (the burst of retries allowed)."""


class ModelSettings(StrictSettings):
    """One model behind the router: its endpoints and how to call them."""

    endpoints: list[str] = Field(min_length=1)
    """host:port, or dns:///name:port for a headless Kubernetes Service."""
    balancing: Literal["round_robin", "pick_first"] = "round_robin"
    """gRPC load-balancing policy inside each endpoint's channel (round_robin sees every pod)."""
    model_name: str | None = None
    """The OIP model name on the server; defaults to this model's key."""
    health_service: str = "readiness"
    """grpc.health.v1 service name watched on each endpoint ("" for servers without one)."""
    timeout_ms: float = Field(10_000, gt=0)
    """Upper bound on one attempt; each attempt also gets its share of the caller's deadline."""
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    retry_budget: RetryBudgetSettings = RetryBudgetSettings()
    tls: ClientTls | None = None
    """TLS to this model's servers; mutual TLS with `cert_file` and `key_file`."""

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for target in value:
            host = target.removeprefix("dns:///")
            if ":" not in host or not host.rsplit(":", 1)[1].isdigit():
                raise ValueError(f"{target!r} needs a port (host:port or dns:///name:port)")
        return value


class ArmSettings(StrictSettings):
    name: Name
    """Arm name, reported in responses."""
    model: str
    """Model key serving this arm."""
    weight: float = Field(ge=0, le=1)
    """Share of covered users; weights sum to 1."""


class ShadowSettings(StrictSettings):
    model: str
    """Model that gets the copies."""
    percent: float = Field(ge=0, le=100)
    """Share of requests copied."""
    max_concurrency: int = Field(8, ge=1)
    """Copies in flight at most; beyond it copies are dropped, never queued."""
    timeout_ms: float = Field(10_000, gt=0)
    """Deadline of one shadow call."""


class CupedSettings(StrictSettings):
    """Regression adjustment on each user's earlier value of the same metric (CUPED)."""

    lookback_days: float = Field(14.0, gt=0, le=365)
    """How far before a user's first exposure in the phase their earlier requests count (in
    any model or experiment, or none)."""


BUILT_IN_DIMENSIONS = ("audio_duration", "model_version")
"""Segments the router knows without the caller: the clip's length bucket
(router/experiments/segments.py) and the version of the model that answered."""

# A gRPC metadata key as the wire carries it (lower case); `-bin` keys hold bytes, not text.
Dimension = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]

REQUEST_METRICS = ("latency_ms", "error_rate", "fallback_rate", "quality_failure_rate")
"""Metrics every routed request of an experiment carries (lower is better for each)."""


MAX_RELATIVE_INCREASE = 10.0
"""A relative bound above this (+1000 %) is surely a percentage written as a number."""


class Criterion(StrictSettings):
    """A bound on how much worse an arm may be than the control arm, on one metric."""

    metric: str = Field(min_length=1)
    """One of latency_ms, error_rate, fallback_rate, quality_failure_rate, or a declared
    outcome (`outcomes.<name>`)."""
    max_absolute_increase: float | None = Field(None, ge=0)
    """How much worse the arm's mean may be, absolutely (e.g. 0.01 = one percentage point).
    Worse is higher, except for an outcome declared `better: higher`, where it is lower."""
    max_relative_increase: float | None = Field(None, ge=0)
    """How much worse, relative to the control mean, as a fraction: 0.2 = +20 % (at most
    MAX_RELATIVE_INCREASE, 10 = +1000 %)."""

    @field_validator("max_relative_increase")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and value > MAX_RELATIVE_INCREASE:
            raise ValueError(
                f"{value:g} is a factor of {value + 1:g} times the control mean; relative "
                f"bounds are fractions (0.2 = +20 %): did you mean a percentage, "
                f"{value / 100:g}?"
            )
        return value

    @model_validator(mode="after")
    def _bound(self) -> Criterion:
        if self.max_absolute_increase is None and self.max_relative_increase is None:
            raise ValueError("set max_absolute_increase or max_relative_increase")
        return self


class ExperimentSettings(StrictSettings):
    name: Name
    seed: Name
    """Hash seed; change it (a new phase) when weights change."""
    coverage: float = Field(1.0, ge=0, le=1)
    """Share of users in the experiment; the rest get the route's primary."""
    arms: list[ArmSettings] = Field(min_length=1)
    allowlist: dict[str, str] = Field(default_factory=dict)
    """user id -> arm name, overriding the hash."""
    shadow: ShadowSettings | None = None
    control: str | None = None
    """The arm others are compared with; the first arm when unset."""
    guardrails: list[Criterion] = Field(default_factory=list)
    """Evidence (always-valid interval) that an arm breaks one of these gives ROLL_BACK."""
    success: list[Criterion] = Field(default_factory=list)
    """Evidence that every arm keeps all of these (and no guardrail fails) gives PROMOTE."""
    offline: list[dict[str, Any]] = Field(default_factory=list)
    """Success criteria for `evaluation compare` on a labelled dataset (paired bootstrap
    intervals, before any user sees the candidate). That tool validates them; the router
    only carries them, so it holds no code of the offline evaluation."""
    min_samples: int = Field(100, ge=2)
    """Requests per arm before any verdict but KEEP_RUNNING."""
    cuped: CupedSettings | None = None
    """Adjust every metric for each user's value before the phase (CUPED, off when absent):
    the verdict and its intervals then use the adjusted comparisons, which need less traffic
    when users' earlier and later values correlate."""
    dimensions: list[Dimension] = Field(default_factory=list, max_length=8)
    """Segments to break the results down by (`router report --segment NAME`): request
    metadata keys recorded on each exposure (e.g. `x-client`), or the built-ins
    `audio_duration` and `model_version`."""
    alpha: float = Field(0.05, gt=0, lt=0.5)
    """Error rate of the intervals."""
    auto_rollback: bool = False
    """On ROLL_BACK over the fleet, the rollout controller sets this phase's coverage to 0 on
    every replica (through the rollout state) and an alert is raised."""
    evaluation_seconds: float = Field(10.0, gt=0)
    """How often the rollout controller evaluates this experiment."""
    ramp: list[float] = Field(default_factory=list)
    """Coverage steps (e.g. [0.01, 0.05, 0.25, 0.5]) the rollout controller takes one at a
    time on healthy fleet verdicts: no failing guardrail, no ratio mismatch, and
    `min_samples` new requests per arm since the last step."""

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names) or any(d.endswith("-bin") for d in names):
            raise ValueError(f"names must be unique text metadata keys (not -bin), got {names}")
        return names

    @model_validator(mode="after")
    def _arms(self) -> ExperimentSettings:
        total = math.fsum(a.weight for a in self.arms)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"arms: weights sum to {total:g}, not 1")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        if any(not 0 < c <= 1 for c in self.ramp) or self.ramp != sorted(set(self.ramp)):
            raise ValueError(f"ramp: steps must rise strictly within (0, 1], got {self.ramp}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control: unknown arm {self.control!r} (arms: {', '.join(names)})")
        for user, arm in self.allowlist.items():
            if arm not in names:
                raise ValueError(
                    f"allowlist.{user}: unknown arm {arm!r} (arms: {', '.join(names)})"
                )
        return self


class QualitySettings(StrictSettings):
    on_failure: Literal["fallback", "mark"] = "fallback"
    """fallback: try the next model; mark: return the output with the failure reported."""
    slo_ms: float | None = Field(None, gt=0)
    """Response-time SLO for this route; slower answers fail the response_time check."""
    min_confidence: float = Field(0.0, ge=0, le=1)
    """Lowest acceptable top score for tags."""
    max_abs_feature: float = Field(1e4, gt=0)
    """Largest acceptable |value| in a feature vector."""
    text_max_chars: int = Field(10_000, ge=1)
    """Longest acceptable text."""
    require_transcript: bool = False
    """Fail empty transcripts (off: silence has none)."""


class RouteSettings(StrictSettings):
    primary: str
    """Model for users outside any experiment."""
    fallbacks: list[str] = Field(default_factory=list)
    """Tried in order when the first model cannot answer well."""
    experiment: ExperimentSettings | None = None
    quality: QualitySettings = QualitySettings()
    default_timeout_ms: float = Field(10_000, gt=0)
    """Deadline for callers that send none."""


class AnomalySettings(StrictSettings):
    alpha: float = Field(0.05, gt=0, lt=1)
    """EWMA smoothing of mean and variance."""
    threshold: float = Field(4.0, gt=0)
    """|z| beyond this is an anomaly."""
    warmup: int = Field(30, ge=2)
    """Observations before z-scores are judged."""


class TrendSettings(StrictSettings):
    bucket_seconds: float = Field(60.0, gt=0)
    """Width of one trend bucket."""
    buckets: int = Field(60, ge=2, le=10_000)
    """Buckets kept per model (60 x 60 s = the last hour)."""
    flat_below: float = Field(0.05, ge=0)
    """A fitted relative change smaller than this is reported as flat."""


class ServerSettings(StrictSettings):
    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535)
    max_in_flight: int = Field(256, ge=1)
    """Requests in flight beyond this are shed with RESOURCE_EXHAUSTED."""
    max_message_bytes: int = Field(32 * 1024 * 1024, gt=1024)
    grace_seconds: float = Field(20.0, ge=0)
    """On SIGTERM, in-flight requests get this long to finish."""
    reload_poll_seconds: float = Field(1.0, gt=0)
    """How often the configuration file is checked for changes."""
    tls: ServerTls | None = None
    """Serve TLS; mutual TLS when `client_ca_file` is set."""
    health_port: int | None = Field(None, ge=0, le=65535)
    """Plaintext port serving only grpc.health.v1, for probes that cannot speak TLS."""
    drain_delay_seconds: float = Field(0.0, ge=0)
    """On SIGTERM, keep accepting requests this long after readiness turns NOT_SERVING, while
    load balancers and Kubernetes endpoints catch up."""
    admin_token_file: ConfigPath | None = None
    """File holding the RouterAdmin bearer token (else ROUTER_ADMIN_TOKEN). Without a token
    the router refuses to listen beyond loopback."""


class TelemetrySettings(StrictSettings):
    prometheus_host: str = "0.0.0.0"
    """Interface of the Prometheus scrape endpoint."""
    prometheus_port: int | None = Field(None, ge=0, le=65535)
    """Port of /metrics (0 picks one); None turns it off. OTLP export follows OTEL_* variables."""


class RolloutSettings(StrictSettings):
    state_file: ConfigPath | None = None
    """The rollout state (JSON) the rollout controller writes and every replica applies: the
    coverage in force per experiment phase. In Kubernetes, the mounted ConfigMap
    `router-rollout-state`. Required when an experiment has `ramp` or `auto_rollback`."""
    poll_seconds: float = Field(1.0, gt=0)
    """How often the state file is checked for changes."""


def _sqlite_relative_to_file(url: str, info: ValidationInfo) -> str:
    """`sqlite:///results.sqlite` is relative to the configuration file, like every path."""
    prefix = "sqlite:///"
    base = (info.context or {}).get(BASE_DIR)
    if base is None or not url.startswith(prefix) or url[len(prefix) :].startswith("/"):
        return url
    return prefix + str(Path(base) / url[len(prefix) :])


class ResultsSettings(StrictSettings):
    """The experiment results store: every routed request of an experiment (an exposure) and
    every outcome callers report, as rows in a database that outlives the replicas."""

    url: Annotated[str, AfterValidator(_sqlite_relative_to_file)] | None = Field(
        None, pattern=r"^(sqlite:///.+|postgresql://.+)$"
    )
    """sqlite:///PATH (one router; relative to this file) or postgresql://USER@HOST:PORT/DB
    (a fleet)."""
    url_file: ConfigPath | None = None
    """A file holding the URL instead (a mounted Secret, since it may carry a password)."""
    flush_ms: float = Field(500, gt=0, le=60_000)
    """Events are written in a batch this often (and all of them at drain)."""
    max_buffer: int = Field(100_000, ge=1)
    """Events kept while the store is down; beyond, new ones are dropped and counted."""
    max_dead_letters: int = Field(10_000, ge=0)
    """Events the store refused on their own (a constraint, a value it cannot hold) kept in
    its results_dead_letters table for replay; beyond, they are dropped and counted."""

    @model_validator(mode="after")
    def _one_url(self) -> ResultsSettings:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("set url or url_file (one of them)")
        return self

    def resolved_url(self) -> str:
        """The URL, read from `url_file` when that is how it is given."""
        if self.url is not None:
            return self.url
        assert self.url_file is not None
        try:
            return self.url_file.read_text().strip()
        except OSError as exc:
            msg = f"results.url_file: cannot read {self.url_file}: {exc.strerror}"
            raise ValueError(msg) from exc


class OutcomeSettings(StrictSettings):
    """An outcome metric callers report with RecordOutcome (was the answer accepted, how was
    it rated): its kind, bounds and which way is better."""

    kind: Literal["binary", "numeric"]
    """binary: 0 or 1; numeric: any value within [min, max]."""
    min: float | None = None
    max: float | None = None
    better: Literal["higher", "lower"] = "higher"
    """Which way is better, for the criteria that name it."""

    @model_validator(mode="after")
    def _bounds(self) -> OutcomeSettings:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self

    def problem(self, value: float) -> str:
        """Why `value` is not a valid report of this metric; empty when it is."""
        if not math.isfinite(value):
            return f"{value} is not a number"
        if self.kind == "binary" and value not in (0.0, 1.0):
            return f"{value:g} is not 0 or 1 (a binary outcome)"
        if self.min is not None and value < self.min:
            return f"{value:g} is below min {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{value:g} is above max {self.max:g}"
        return ""


class RouterConfig(StrictSettings):
    server: ServerSettings = ServerSettings()
    rollout: RolloutSettings = RolloutSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    alerting: AlertingSettings = AlertingSettings()
    models: dict[Name, ModelSettings] = Field(min_length=1)
    routes: dict[TaskName, RouteSettings] = Field(min_length=1)
    anomaly: AnomalySettings = AnomalySettings()
    trends: TrendSettings = TrendSettings()
    results: ResultsSettings | None = None
    """Required by any experiment: its statistics come from this store, and only from it."""
    outcomes: dict[Annotated[str, Field(min_length=1, max_length=64)], OutcomeSettings] = Field(
        default_factory=dict
    )
    """Outcome metrics callers may report (RecordOutcome), by name."""

    @model_validator(mode="after")
    def _references(self) -> RouterConfig:
        errors = reference_errors(self.model_dump())
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def task_errors(self, tasks: Mapping[str, frozenset[str]]) -> list[str]:
        """Routes sending a task to a model whose ModelMetadata says it cannot do it."""
        return reference_errors(self.model_dump(), tasks)


def _model_references(routes: object) -> Iterator[tuple[str, str]]:
    """(field path, model key) for every model a route can send to. It reads the file's
    mapping, not the validated model, so that a file with field errors elsewhere still gets its
    references judged in the same report."""
    for task, route in routes.items() if isinstance(routes, dict) else ():
        if not isinstance(route, dict):
            continue
        if isinstance(primary := route.get("primary"), str):
            yield f"routes.{task}.primary", primary
        fallbacks = route.get("fallbacks")
        for i, name in enumerate(fallbacks if isinstance(fallbacks, list) else ()):
            if isinstance(name, str):
                yield f"routes.{task}.fallbacks[{i}]", name
        experiment = route.get("experiment")
        if not isinstance(experiment, dict):
            continue
        arms = experiment.get("arms")
        for i, arm in enumerate(arms if isinstance(arms, list) else ()):
            if isinstance(arm, dict) and isinstance(arm.get("model"), str):
                yield f"routes.{task}.experiment.arms[{i}].model", arm["model"]
        shadow = experiment.get("shadow")
        if isinstance(shadow, dict) and isinstance(shadow.get("model"), str):
            yield f"routes.{task}.experiment.shadow.model", shadow["model"]


def reference_errors(
    raw: Mapping[str, Any], tasks: Mapping[str, frozenset[str]] | None = None
) -> list[str]:
    """The configuration's semantic errors, from its mapping: references to unknown models, a
    governed experiment without a rollout state file, and (given what each reachable model
    declared in its ModelMetadata) tasks a model cannot do. Models not in `tasks` are not
    judged on their tasks yet."""
    models = raw.get("models")
    known = sorted(models) if isinstance(models, dict) else None
    errors = []
    for path, model in _model_references(raw.get("routes")):
        task = path.split(".")[1]
        if known is not None and model not in known:
            errors.append(f"{path}: unknown model {model!r} (models: {', '.join(known)})")
        elif tasks and model in tasks and task not in tasks[model]:
            can = ", ".join(sorted(tasks[model])) or "nothing"
            errors.append(f"{path}: model {model!r} cannot {task} (it supports {can})")
    errors += _experiment_errors(raw)
    rollout = raw.get("rollout")
    if not (isinstance(rollout, dict) and rollout.get("state_file")):
        routes = raw.get("routes")
        governed = [
            f"routes.{task}.experiment ({e.get('name')})"
            for task, r in (routes.items() if isinstance(routes, dict) else ())
            if isinstance(r, dict)
            and isinstance(e := r.get("experiment"), dict)
            and (e.get("ramp") or e.get("auto_rollback"))
        ]
        if governed:
            errors.append(
                "rollout.state_file: required, since "
                + ", ".join(governed)
                + " has ramp or auto_rollback: the rollout controller (`router rollout`) "
                "decides coverage for the fleet and writes it there"
            )
    return errors


def _experiment_errors(raw: Mapping[str, Any]) -> list[str]:
    """Experiments need the results store, and criteria name metrics that exist."""
    routes = raw.get("routes")
    experiments = [
        (task, e)
        for task, r in (routes.items() if isinstance(routes, dict) else ())
        if isinstance(r, dict) and isinstance(e := r.get("experiment"), dict)
    ]
    errors = []
    if experiments and not raw.get("results"):
        names = ", ".join(f"routes.{task}.experiment ({e.get('name')})" for task, e in experiments)
        errors.append(
            f"results: required, since {names} is an experiment: its exposures and outcomes "
            "are kept there (e.g. results: {url: sqlite:///results.sqlite})"
        )
    declared = raw.get("outcomes")
    known = [*REQUEST_METRICS, *(declared if isinstance(declared, dict) else ())]
    for task, e in experiments:
        for kind in ("guardrails", "success"):
            criteria = e.get(kind)
            for i, c in enumerate(criteria if isinstance(criteria, list) else ()):
                metric = c.get("metric") if isinstance(c, dict) else None
                if isinstance(metric, str) and metric not in known:
                    errors.append(
                        f"routes.{task}.experiment.{kind}[{i}].metric: unknown metric "
                        f"{metric!r} (metrics: {', '.join(known)}; declare outcomes under "
                        "`outcomes`)"
                    )
    return errors


def find_experiment(
    routes: Mapping[TaskName, RouteSettings], name: str
) -> ExperimentSettings | None:
    return next(
        (r.experiment for r in routes.values() if r.experiment and r.experiment.name == name), None
    )


class ConfigError(Exception):
    """The configuration file cannot be used; the message names each problem's field."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors if errors is not None else [message]


def load_config(path: Path, tasks: Mapping[str, frozenset[str]] | None = None) -> RouterConfig:
    """The validated configuration, or ConfigError listing every field error and every
    semantic error of the file at once (tasks judged against `tasks`, what each model declared,
    when the file's fields are invalid; `RouterServer` judges them against the model servers
    once they are valid)."""
    try:
        raw = read_mapping(path)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        return validate_mapping(RouterConfig, raw, path)
    except ValidationError as exc:
        errors = field_errors(exc)
    # The semantic check inside RouterConfig did not run: fields failed first.
    errors += [e for e in reference_errors(raw, tasks) if e not in errors]
    raise ConfigError(format_errors(path, "router configuration", errors), errors)
