"""Experiment helpers several test modules share: arms with known moments, and waiting for a
router to apply a rollout state."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from gamaserving.router.v1 import router_pb2 as rpb
from router.experiments.results import ArmResults
from router.experiments.stats import Moments


def two_arms(
    control: str = "a", candidate: str = "b", name: str = "ab", seed: str = "p1", **extra: Any
) -> dict[str, Any]:
    """An experiment of a route in the router's configuration: control and candidate half
    and half, every user in it unless `coverage` says otherwise."""
    return {
        "name": name,
        "seed": seed,
        "coverage": 1.0,
        "arms": [
            {"name": "control", "model": control, "weight": 0.5},
            {"name": "candidate", "model": candidate, "weight": 0.5},
        ],
        **extra,
    }


def arm(
    n: int, latency: float, error_rate: float = 0.0, fallback_rate: float = 0.0, seed: int = 0
) -> ArmResults:
    """An arm of n users with a request each (so units and requests agree)."""
    rng = np.random.default_rng(seed)
    values = {
        "latency_ms": rng.normal(latency, latency * 0.1, n),
        "error_rate": np.arange(n) < error_rate * n,
        "fallback_rate": np.arange(n) < fallback_rate * n,
        "quality_failure_rate": np.zeros(n),
    }
    return ArmResults(n, n, {m: Moments.of(v.astype(float)) for m, v in values.items()})


async def listed_experiment(router: Any) -> rpb.Experiment:
    """The router's one experiment, as ListExperiments shows it."""
    (listed,) = (await router.admin.ListExperiments(rpb.ListExperimentsRequest())).experiments
    return listed


async def applied(router: Any, coverage: float, within: float = 10.0) -> rpb.Experiment:
    """Wait for the router to apply the state file (it polls it every 0.05 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (found := await listed_experiment(router)).coverage != coverage:
        assert loop.time() < deadline, f"coverage still {found.coverage}, wanted {coverage}"
        await asyncio.sleep(0.02)
    return found
