"""Shadow traffic: the shadow gets its share, never changes or delays the response, and its
agreement with the served output is recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gamaserving.router.v1 import router_pb2 as rpb
from router.experiments.shadow import sampled
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server


def _config(primary: str, shadow: str, percent: float, **shadow_extra: object) -> dict[str, object]:
    experiment = {
        "name": "shadowing",
        "seed": "s",
        "arms": [{"name": "control", "model": "primary", "weight": 1.0}],
        "shadow": {"model": "shadow", "percent": percent, **shadow_extra},
    }
    return base_config(
        {"primary": [primary], "shadow": [shadow]},
        tag={"primary": "primary", "experiment": experiment},
    )


async def test_shadow_receives_its_share_and_agreement_is_recorded(tmp_path: Path) -> None:
    async with fault_server("primary") as (_, pa), fault_server("shadow") as (shadow, sa):
        async with live_router(_config(pa, sa, 30), tmp_path) as router:
            ids = [f"req-{i}" for i in range(200)]
            responses = [await router.process(rpb.TASK_TAG, wav(0.3), request_id=i) for i in ids]
            await router.core.shadow.drain()
            expected = sum(sampled(i, 30) for i in ids)
            assert shadow.received == expected and 40 <= expected <= 80
            assert [r.route.shadowed for r in responses] == [sampled(i, 30) for i in ids]
            assert all(r.route.model == "primary" for r in responses)
            report = await router.admin.GetQualityReport(rpb.GetQualityReportRequest())
            (agreement,) = report.shadow
            assert (agreement.primary_model, agreement.shadow_model, agreement.compared) == (
                "primary",
                "shadow",
                expected,
            )
            assert agreement.label_agreement == 1.0  # the same labels from both


async def test_failing_or_slow_shadow_never_changes_the_response(tmp_path: Path) -> None:
    async with (
        fault_server("primary") as (_, pa),
        fault_server("shadow", mode="internal") as (_, sa),
    ):
        async with live_router(_config(pa, sa, 100), tmp_path) as router:
            responses = [await router.process(rpb.TASK_TAG, wav(0.3)) for _ in range(10)]
            await router.core.shadow.drain()
            assert all(r.route.model == "primary" and r.quality.passed for r in responses)
            assert router.core.shadow.stats[("primary", "shadow")].failed == 10
    async with (
        fault_server("primary") as (_, pa),
        fault_server("shadow", mode="slow", delay=2.0) as (_, sa),
    ):
        async with live_router(_config(pa, sa, 100, max_concurrency=2), tmp_path) as router:
            responses = await asyncio.gather(
                *(router.process(rpb.TASK_TAG, wav(0.3)) for _ in range(8))
            )
            stats = router.core.shadow.stats[("primary", "shadow")]
            # Every answer is back while the 2-second shadow copies are still running.
            assert stats.compared == stats.failed == 0 and router.core.shadow.running()
            assert all(r.route.model == "primary" for r in responses)
            assert stats.dropped >= 4  # bounded concurrency: copies beyond 2 are dropped
            assert sum(r.route.shadowed for r in responses) <= 4
