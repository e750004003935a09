"""The local stack: two model servers and a router as child processes, each in its own session
so that a Ctrl-C reaches only the demo, which then stops them in order; and each dies with its
parent (PR_SET_PDEATHSIG) should the demo itself be killed."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gamaserving.settings import read_mapping

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# Its own generator: tests that seed the global one (hypothesis does) must not pick alike.
_random = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A free loopback port for a server to bind later, taken below the kernel's ephemeral
    range: a port from port 0 (in that range) can be handed to an outgoing connection, or to a
    client reconnecting to a stopped server on that very port (a TCP self-connect), before the
    server binds it or while it restarts."""
    high = _ephemeral_low()
    low = max(1024, high - 12000)
    for _ in range(200):
        port = _random.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high - 1}")


def modelserver_args(model_dir: Path, port: int, *extra: str) -> list[str]:
    """`modelserver serve` on loopback, with this interpreter."""
    return [sys.executable, "-m", "modelserver.cli", "serve", "--model-dir", str(model_dir),
            "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip


def router_args(config: Path, port: int) -> list[str]:
    """`router serve` on loopback, with this interpreter."""
    return [sys.executable, "-m", "router.cli", "serve", "--config", str(config),
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def controller_args(config: Path, health_port: int) -> list[str]:
    """`router rollout` on the configuration's results store."""
    return [sys.executable, "-m", "router.cli", "rollout", "--config", str(config),
            "--health-port", str(health_port)]  # fmt: skip


@dataclass
class Process:
    name: str
    args: list[str]
    port: int
    log: Path
    health_service: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:  # a restart keeps the earlier log
            self.proc = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_serving(self, deadline: float) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=self.health_service)
            while time.monotonic() < deadline:
                if not self.running():
                    raise RuntimeError(
                        f"{self.name} exited during start-up; its log:\n{self.log_tail()}"
                    )
                with contextlib.suppress(grpc.RpcError):
                    if (
                        stub.Check(request, timeout=1).status
                        == health_pb2.HealthCheckResponse.SERVING
                    ):
                        return
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not become ready; see {self.log}")

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.terminate()


@dataclass
class Stack:
    models: Path
    out: Path
    router_port: int = 0
    model_ports: dict[str, int] = field(default_factory=dict)
    """Fixed ports per model (`make up`); free ones when empty (the demo, tests)."""
    processes: dict[str, Process] = field(default_factory=dict)
    shipped: Path | None = None
    """A router configuration to run as it is (`make up`); None: the demo's own, written to
    `out`."""

    @classmethod
    def from_config(cls, config: Path, models: Path, out: Path) -> Stack:
        """The stack a router configuration describes: each model it names served from
        `models/<name>` on the loopback port of its first endpoint, the router on server.port."""
        raw = read_mapping(config)
        ports = {}
        for name, model in raw["models"].items():
            host, _, port = model["endpoints"][0].rpartition(":")
            if host not in ("127.0.0.1", "localhost") or not port.isdigit():
                raise RuntimeError(
                    f"{config}: models.{name}.endpoints[0] is {model['endpoints'][0]!r}; "
                    "a local stack serves each model on 127.0.0.1:PORT"
                )
            ports[name] = int(port)
        return cls(models, out, int(raw["server"]["port"]), ports, shipped=config)

    def config(self, ports: dict[str, int]) -> dict[str, Any]:
        """The demo's router configuration: an embed experiment ramping GAMA in, quick alerts."""
        return {
            "server": {"port": self.router_port, "grace_seconds": 5},
            # The rollout controller (a process of its own) writes it; the router follows it.
            "rollout": {"state_file": str(self.rollout_state), "poll_seconds": 0.5},
            "results": {"url": f"sqlite:///{(self.out / 'results.sqlite').resolve()}"},
            "outcomes": {"accepted": {"kind": "binary"}},
            "models": {
                name: {"endpoints": [f"127.0.0.1:{port}"], "timeout_ms": 5000}
                for name, port in ports.items()
            },
            "routes": {
                "embed": {
                    "primary": "wav2vec2",
                    "fallbacks": ["gama"],
                    "experiment": {
                        "name": "embed-gama",
                        "seed": "embed-gama-demo",
                        "coverage": 0.05,
                        "ramp": [0.25, 0.5, 1.0],
                        "evaluation_seconds": 2,
                        "min_samples": 20,
                        "arms": [
                            {"name": "control", "model": "wav2vec2", "weight": 0.5},
                            {"name": "candidate", "model": "gama", "weight": 0.5},
                        ],
                        "shadow": {"model": "gama", "percent": 10, "max_concurrency": 2},
                        # The results page breaks the phase down by these.
                        "dimensions": ["x-client", "audio_duration", "model_version"],
                        "guardrails": [
                            {"metric": "error_rate", "max_absolute_increase": 0.02},
                            {"metric": "quality_failure_rate", "max_absolute_increase": 0.05},
                        ],
                        "success": [
                            # A fraction: at most +100 % (twice as slow).
                            {"metric": "latency_ms", "max_relative_increase": 1.0},
                            # Reported by the simulated users: did the answer help them?
                            {"metric": "accepted", "max_absolute_increase": 0.1},
                        ],
                        "auto_rollback": True,
                        "offline": [
                            {"metric": "knn_accuracy", "max_absolute_worsening": 0.01},
                            {"metric": "latency_p95_ms", "max_relative_worsening": 0.5},
                        ],
                    },
                    "quality": {"on_failure": "fallback", "slo_ms": 2000},
                },
                "transcribe": {"primary": "wav2vec2"},
                "tag": {"primary": "gama"},
                "describe": {"primary": "gama"},
            },
            "alerting": {
                "evaluation_seconds": 1,
                "window_seconds": 10,
                "history_path": str(self.out / "alerts.sqlite"),
                "rules": [
                    {
                        "name": "ModelUnhealthy",
                        "signal": "model_unhealthy",
                        "threshold": 0.5,
                        "for_seconds": 2,
                        "severity": "critical",
                        "summary": "no endpoint of model {model} is serving",
                    },
                    {
                        "name": "FailoverRateHigh",
                        "signal": "fallback_rate",
                        "threshold": 0.05,
                        "for_seconds": 2,
                        "summary": "{value:.0%} of requests fall back from {model}",
                    },
                    {
                        "name": "CircuitOpen",
                        "signal": "circuit_open",
                        "threshold": 0.5,
                        "for_seconds": 2,
                        "summary": "circuit open for {model} at {endpoint}",
                    },
                    {
                        "name": "QualityFailureRateHigh",
                        "signal": "quality_failure_rate",
                        "threshold": 0.05,
                        "for_seconds": 2,
                        "summary": "{value:.0%} of {model} outputs fail quality checks",
                    },
                    {
                        "name": "ExperimentRamped",
                        "signal": "experiment_ramped",
                        "threshold": 0.5,
                        "severity": "info",
                        "summary": "experiment {experiment} ramped (rollout controller)",
                    },
                    {
                        "name": "ExperimentRolledBack",
                        "signal": "experiment_rolled_back",
                        "threshold": 0.5,
                        "severity": "critical",
                        "summary": "experiment {experiment} was rolled back",
                    },
                ],
            },
        }

    def start(self, timeout: float = 120.0) -> None:
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        names = list(self.model_ports) if self.shipped else ["wav2vec2", "gama"]
        ports = {m: self.model_ports.get(m) or free_port() for m in names}
        for name, port in ports.items():
            args = modelserver_args(self.models / name, port)
            self.processes[name] = Process(name, args, port, logs / f"{name}.log", "readiness")
        self.router_port = self.router_port or free_port()
        config = self.config_path
        if self.shipped is None:
            config.write_text(yaml.safe_dump(self.config(ports), sort_keys=False))
        router = Process(
            "router",
            router_args(config, self.router_port),
            self.router_port,
            logs / "router.log",
            "readiness",
        )
        deadline = time.monotonic() + timeout
        for name in ports:
            self.processes[name].start()
        for name in ports:
            self.processes[name].wait_serving(deadline)
        self.processes["router"] = router
        router.start()
        router.wait_serving(deadline)
        health = free_port()
        controller = Process(
            "rollout-controller",
            controller_args(config, health),
            health,
            logs / "rollout-controller.log",
            "liveness",
        )
        self.processes["rollout-controller"] = controller
        controller.start()
        controller.wait_serving(deadline)

    @property
    def config_path(self) -> Path:
        return self.shipped or self.out / "router.yaml"

    @property
    def rollout_state(self) -> Path:
        return (self.out / "rollout.json").resolve()

    def stop(self, grace: float = 10.0) -> list[str]:
        """SIGTERM to all (the controller and the router first, so nothing decides or sends),
        then SIGKILL to stragglers. Returns the names that had to be killed."""
        # The controller and the router first, so nothing decides or sends; then the models.
        first = [self.processes.get(n) for n in ("rollout-controller", "router")]
        order = [p for p in first if p] + [
            p for p in reversed(self.processes.values()) if p not in first
        ]
        for p in order:
            p.terminate()
        deadline = time.monotonic() + grace
        killed = []
        for p in order:
            if p.proc is None:
                continue
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(p.name)
                p.kill()
        return killed

    def alive(self) -> list[str]:
        return [p.name for p in self.processes.values() if p.running()]

    def exited(self) -> list[Process]:
        """Processes that were started and have stopped."""
        return [p for p in self.processes.values() if p.proc is not None and not p.running()]
