"""Alert signals from the router's own bookkeeping: one value per label set, rates over a
sliding window of counter snapshots."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, get_args

import numpy as np
import psutil

from router.alerts.engine import Sample
from router.alerts.settings import Signal
from router.failover.circuit import State

if TYPE_CHECKING:
    from router.core import RouterCore


class Windowed:
    """Deltas of a cumulative counter over the last `window` seconds."""

    def __init__(
        self, read: Callable[[], Counter[Hashable]], window: float, clock: Callable[[], float]
    ) -> None:
        self.read = read
        self.window = window
        self.clock = clock
        # The counter as it stands now is the first base: what happens before the first
        # evaluation (a reload failing a second after start) is a change, not the baseline.
        self.snapshots: deque[tuple[float, Counter[Hashable]]] = deque([(clock(), Counter(read()))])

    def delta(self) -> Counter[Hashable]:
        now = self.clock()
        current = Counter(self.read())
        self.snapshots.append((now, current))
        while len(self.snapshots) > 1 and self.snapshots[1][0] <= now - self.window:
            self.snapshots.popleft()
        base = self.snapshots[0][1]
        return Counter(
            {k: v - base.get(k, 0) for k, v in current.items() if v - base.get(k, 0) > 0}
        )


class Signals:
    def __init__(
        self,
        core: RouterCore,
        window: float,
        reload_failures: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.window = window
        self.clock = clock
        stats = core.stats
        self._requests = Windowed(
            lambda: Counter({"all": sum(stats.requests.values())}), window, clock
        )
        self._fallbacks = Windowed(
            lambda: Counter({k[0]: v for k, v in stats.fallbacks_from.items()}), window, clock
        )
        self._validated = Windowed(lambda: Counter(stats.validated), window, clock)
        self._failed = Windowed(lambda: Counter(stats.quality_failed), window, clock)
        self._reloads = Windowed(lambda: Counter({"failed": reload_failures()}), window, clock)
        self._writer = Windowed(lambda: _writer_counts(core), window, clock)
        self._process = psutil.Process()
        self.registry: dict[Signal, Callable[[], list[Sample]]] = {
            "model_unhealthy": self._model_unhealthy,
            "fallback_rate": self._fallback_rate,
            "circuit_open": self._circuit_open,
            "process_memory_bytes": self._process_memory_bytes,
            "gpu_memory_ratio": self._gpu_memory_ratio,
            "quality_failure_rate": self._quality_failure_rate,
            "anomalies": self._anomalies,
            "latency_p95_ms": self._latency_p95_ms,
            "config_reload_failures": self._config_reload_failures,
            "experiment_rolled_back": self._experiment_rolled_back,
            "experiment_ramped": self._experiment_ramped,
            "rollout_state_invalid": self._rollout_state_invalid,
            "results_dropped": self._results_dropped,
            "results_set_aside": self._results_set_aside,
            "request_ids_reused": self._request_ids_reused,
            # The engine raises AlertRuleFailing itself, from the rules whose signal raised.
            "alert_rules_failing": list,
        }
        # Every name a rule may give has its reading, checked when the router starts.
        unread = set(get_args(Signal)) - set(self.registry)
        if unread:
            raise TypeError(f"alert signals without a reading: {', '.join(sorted(unread))}")

    def sample(self, signal: Signal) -> list[Sample]:
        return self.registry[signal]()

    def _model_unhealthy(self) -> list[Sample]:
        state = self.core.state
        if state is None:
            return []
        return [
            ({"model": m}, float(not any(e.serving for e in b.endpoints)))
            for m, b in state.backends.items()
        ]

    def _circuit_open(self) -> list[Sample]:
        return [
            ({"model": m, "endpoint": e}, float(s is State.OPEN))
            for m, e, s, _ in self.core.circuits()
        ]

    def _fallback_rate(self) -> list[Sample]:
        total = self._requests.delta().get("all", 0)
        fallbacks = self._fallbacks.delta()
        return [({"model": str(m)}, n / total) for m, n in fallbacks.items() if total]

    def _quality_failure_rate(self) -> list[Sample]:
        validated, failed = self._validated.delta(), self._failed.delta()
        return [({"model": str(m)}, failed.get(m, 0) / n) for m, n in validated.items() if n]

    def _anomalies(self) -> list[Sample]:
        if self.core.anomalies is None:
            return []
        since = self.clock() - self.window
        counts = Counter(
            (a.model, a.signal) for a in self.core.anomalies.anomalies if a.at >= since
        )
        return [({"model": m, "signal": s}, float(n)) for (m, s), n in counts.items()]

    def _latency_p95_ms(self) -> list[Sample]:
        since = self.core.clock() - self.window
        by_model: dict[str, list[float]] = {}
        for t, model, ms in self.core.stats.latencies:
            if t >= since:
                by_model.setdefault(model, []).append(ms)
        return [({"model": m}, float(np.percentile(v, 95))) for m, v in by_model.items()]

    def _process_memory_bytes(self) -> list[Sample]:
        return [({}, float(self._process.memory_info().rss))]

    def _gpu_memory_ratio(self) -> list[Sample]:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:
            return []
        out = []
        for i, h in enumerate(handles):
            info = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append(({"hw_id": str(i)}, info.used / info.total))
        return out

    def _experiment_rolled_back(self) -> list[Sample]:
        policy = self.core.policy
        return [
            (
                {"experiment": e.name, "by": policy.rollout.rolled_back_by(e.name, e.seed)},
                float(policy.rolled_back(e)),
            )
            for _, e in self.core.experiments()
        ]

    def _experiment_ramped(self) -> list[Sample]:
        """1 for the window after the rollout state shows a ramp step of the current phase."""
        policy, since = self.core.policy, self.clock() - self.window
        out: list[Sample] = []
        for _, e in self.core.experiments():
            last = policy.last(e, "ramp")
            out.append(({"experiment": e.name}, float(last is not None and last.at >= since)))
        return out

    def _rollout_state_invalid(self) -> list[Sample]:
        return [({}, float(bool(self.core.policy.state_error)))]

    def _results_dropped(self) -> list[Sample]:
        return [({}, float(self._writer.delta().get("dropped", 0)))]

    def _results_set_aside(self) -> list[Sample]:
        return [({}, float(self._writer.delta().get("set_aside", 0)))]

    def _request_ids_reused(self) -> list[Sample]:
        return [({}, float(self._writer.delta().get("reused", 0)))]

    def _config_reload_failures(self) -> list[Sample]:
        return [({}, float(self._reloads.delta().get("failed", 0)))]


def _writer_counts(core: RouterCore) -> Counter[Hashable]:
    if core.results is None:
        return Counter()
    stats = core.results.writer.stats
    return Counter({"dropped": stats.dropped, "set_aside": stats.set_aside, "reused": stats.reused})
