"""The router benchmark's arithmetic: added latency is measured against the direct path, the
telemetry-off baseline pools both plain router paths, and the bootstrap interval brackets the
ratio and widens with round-to-round spread. Synthetic rounds, so the expected ratios are
known exactly."""

from __future__ import annotations

import re

from benchmarks.common import Load, Rounds, added_ratio
from benchmarks.router import CONCURRENCY, PATHS, ROUNDS, table


def _load(ms: float) -> Load:
    return Load(100, 1.0, ms, ms, 1.0, [ms] * 100)


def _rounds(p50: dict[str, float], jitter: float = 0.0) -> Rounds:
    """Every path at its p50 in every round; `jitter` moves the telemetry path's round i by
    +jitter or -jitter alternately."""
    rounds: Rounds = {}
    for c in CONCURRENCY:
        for path in PATHS:
            rounds[(path, c)] = [
                _load(p50[path] + (jitter * (-1) ** i if path == "router+telemetry" else 0.0))
                for i in range(ROUNDS)
            ]
    return rounds


BASE = {
    "direct": 1.0,
    "proxy": 1.5,
    "router": 2.0,
    "router, identical copy": 2.0,
    "router+telemetry": 2.1,
    "router+telemetry, all traces": 2.3,
}


def test_ratios_are_of_latency_added_to_the_direct_path() -> None:
    rounds = _rounds(BASE)
    assert added_ratio(rounds, 1, ("router+telemetry",), ("router",)) == 1.1
    assert added_ratio(rounds, 1, ("router",), ("proxy",)) == 2.0
    # The baseline pools its paths' rounds: one plain group slower moves the pooled p50.
    slower = _rounds(BASE | {"router, identical copy": 3.0})
    pooled = added_ratio(slower, 1, ("router+telemetry",), ("router", "router, identical copy"))
    assert 0.55 <= pooled < 1.1


def test_table_reports_each_telemetry_ratio_with_an_interval_that_brackets_it() -> None:
    steady = table(_rounds(BASE))
    assert "| router's added p50 latency, c=1 | **1.10** (1.10-1.10) | **1.30** (1.30-1.30)" in (
        steady
    )
    noisy = table(_rounds(BASE, jitter=0.3))
    row = next(
        line for line in noisy.splitlines() if line.startswith("| router's added p50 latency, c=16")
    )
    point, low, high = map(float, re.findall(r"\*\*([\d.]+)\*\* \(([\d.]+)-([\d.]+)\)", row)[0])
    assert low < point < high
    assert high - low > 0.2
