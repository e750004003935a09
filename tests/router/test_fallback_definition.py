"""One definition of fallback: another model answered. A retry on a second endpoint of the
same model is a retry, and the response, the fallback metric, the quality trend and the
experiment results all read the two kinds of request the same way."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gamaserving.router.v1 import router_pb2 as rpb
from router.results.query import phase_statistics
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.experiments import two_arms
from tests.support.fault_server import fault_server


def _fallback_series(port: int) -> dict[tuple[str, str, str], float]:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.labels["reason"], s.labels["from_model"], s.labels["to_model"]): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == "gamaserving_router_fallbacks_total"
    }


async def test_a_retry_is_not_a_fallback_and_every_reader_agrees(tmp_path: Path) -> None:
    async with (
        fault_server("a", mode="unavailable") as (_, a_bad),
        fault_server("a") as (a_good_model, a_good),
        fault_server("b") as (_, b),
    ):
        experiment = two_arms("a", "a")
        cfg = base_config(
            {"a": [a_bad, a_good], "b": [b]},
            tag={"primary": "a", "fallbacks": ["b"], "experiment": experiment},
        )
        cfg["models"]["a"]["retry_budget"] = {"ratio": 1.0, "max_tokens": 10}
        cfg["telemetry"] = {"prometheus_host": "127.0.0.1", "prometheus_port": 0}
        async with live_router(cfg, tmp_path) as router:
            # Endpoints rotate from the first: the bad one, then the good one (a retry).
            retried = await router.process(rpb.TASK_TAG, wav(0.2), user_id="u1")
            a_good_model.mode = "unavailable"  # now no endpoint of a answers: b does
            fell_back = await router.process(rpb.TASK_TAG, wav(0.2), user_id="u2")
            metric = await asyncio.to_thread(_fallback_series, router.server.metrics_port)
            core = router.core
            trend = {
                s.metric: s.points for s in core.trends.series("a") if s.metric == "fallback_rate"
            }
            await router.flush()
            assert core.results is not None
            arms = phase_statistics(core.results.store, "ab", "p1")

    # The response.
    assert retried.route.model == "a" and not retried.route.fallback_used
    assert retried.route.fallback_reason == ""
    assert [(x.model, x.outcome) for x in retried.route.attempts] == [
        ("a", "failed"),
        ("a", "ok"),
    ]
    assert fell_back.route.model == "b" and fell_back.route.fallback_used
    assert fell_back.route.fallback_reason == "unavailable"
    assert [x.outcome for x in fell_back.route.attempts] == ["failed", "failed", "ok"]
    # The metric and the router's counters: one fallback, from a to b.
    assert metric == {("unavailable", "a", "b"): 1.0}
    assert core.stats.fallbacks == Counter({"unavailable": 1})
    # The quality trend: two requests chose a, one of them fell back.
    ((point,),) = trend.values()
    _, rate, chosen = point
    assert (rate, chosen) == (0.5, 2)
    # The experiment results: fallback_rate over both arms is one in two.
    fallbacks = [a.metrics["fallback_rate"] for a in arms.values()]
    assert sum(m.y for m in fallbacks) == 2 and sum(m.x for m in fallbacks) == 1
