"""Each fault of a fault-injecting model server is caught by its validator, triggers fallback
where configured (or is marked), and is counted in the quality report."""

from __future__ import annotations

from pathlib import Path

import pytest

from gamaserving.router.v1 import router_pb2 as rpb
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server

CASES = [
    ("nan", rpb.TASK_EMBED, "features.finite"),
    ("wrong_dim", rpb.TASK_EMBED, "features.dimension"),
    ("zeros", rpb.TASK_EMBED, "features.degenerate"),
    ("bad_scores", rpb.TASK_TAG, "patterns.score_range"),
    ("unknown_label", rpb.TASK_TAG, "patterns.known_labels"),
    ("empty_text", rpb.TASK_DESCRIBE, "text.non_empty"),
    ("slow", rpb.TASK_DESCRIBE, "response_time"),
]
TASK = {rpb.TASK_EMBED: "embed", rpb.TASK_TAG: "tag", rpb.TASK_DESCRIBE: "describe"}


def _config(faulty: str, good: str, task: str, on_failure: str) -> dict[str, object]:
    quality = {"on_failure": on_failure, "slo_ms": 300}
    cfg = base_config(
        {"faulty": [faulty], "good": [good]},
        **{task: {"primary": "faulty", "fallbacks": ["good"], "quality": quality}},
    )
    return cfg


@pytest.mark.parametrize(("mode", "task", "check"), CASES, ids=[c[0] for c in CASES])
async def test_fault_triggers_fallback_and_is_counted(
    tmp_path: Path, mode: str, task: int, check: str
) -> None:
    delay = 0.5 if mode == "slow" else 0.0
    async with (
        fault_server("faulty", mode=mode, delay=delay) as (faulty, fa),
        fault_server("good") as (good, ga),
    ):
        async with live_router(_config(fa, ga, TASK[task], "fallback"), tmp_path) as router:
            await router.all_serving()  # the faulty model is tried, not skipped as unknown
            for _ in range(3):
                response = await router.process(task, wav(0.5), prompt="What is it?")
                assert response.route.model == "good"
                assert (
                    response.route.fallback_used
                    and response.route.fallback_reason == f"quality:{check}"
                )
                assert response.quality.passed
                assert [a.outcome for a in response.route.attempts] == ["failed", "ok"]
            report = await router.admin.GetQualityReport(
                rpb.GetQualityReportRequest(model="faulty")
            )
            row = next(c for c in report.checks if c.check == check)
            assert (row.total, row.failed, row.pass_rate) == (3, 3, 0.0)
            assert faulty.received == 3 and good.received == 3


async def test_mark_mode_returns_the_output_with_the_failure(tmp_path: Path) -> None:
    async with fault_server("faulty", mode="nan") as (_, fa), fault_server("good") as (good, ga):
        async with live_router(_config(fa, ga, "embed", "mark"), tmp_path) as router:
            response = await router.process(rpb.TASK_EMBED, wav(0.5))
            assert response.route.model == "faulty" and not response.route.fallback_used
            assert not response.quality.passed
            assert [c.name for c in response.quality.failed_checks] == ["features.finite"]
            assert "NaN" in response.quality.failed_checks[0].details
            assert good.received == 0


async def test_when_every_model_fails_a_check_the_first_answer_comes_back_marked(
    tmp_path: Path,
) -> None:
    async with (
        fault_server("faulty", mode="nan") as (_, fa),
        fault_server("good", mode="zeros") as (_, ga),
    ):
        async with live_router(_config(fa, ga, "embed", "fallback"), tmp_path) as router:
            response = await router.process(rpb.TASK_EMBED, wav(0.5))
            assert response.route.model == "faulty" and not response.quality.passed
            assert [a.reason for a in response.route.attempts] == [
                "quality:features.finite",
                "quality:features.degenerate",
            ]


async def test_invalid_argument_from_a_model_is_returned_without_fallback(tmp_path: Path) -> None:
    import grpc

    async with (
        fault_server("faulty", mode="invalid") as (_, fa),
        fault_server("good") as (good, ga),
    ):
        async with live_router(_config(fa, ga, "embed", "fallback"), tmp_path) as router:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await router.process(rpb.TASK_EMBED, wav(0.5))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "your audio is bad" in (info.value.details() or "")
            assert good.received == 0


async def test_anomalies_are_reported(tmp_path: Path) -> None:
    async with fault_server("faulty") as (faulty, fa), fault_server("good") as (_, ga):
        cfg = _config(fa, ga, "embed", "fallback")
        cfg["anomaly"] = {"warmup": 20, "threshold": 4, "alpha": 0.05}
        async with live_router(cfg, tmp_path) as router:
            for _ in range(30):
                await router.process(rpb.TASK_EMBED, wav(0.5))
            faulty.dim = 64
            faulty.mode = "ok"
            faulty.delay = 0.4  # latency jumps from ~2 ms to 400 ms
            await router.process(rpb.TASK_EMBED, wav(0.5))
            report = await router.admin.GetQualityReport(
                rpb.GetQualityReportRequest(model="faulty")
            )
            assert any(a.signal == "latency_ms" and a.zscore > 4 for a in report.anomalies)
