"""Segments end to end: a real router records each exposure's dimensions (a metadata key, the
clip's length bucket, the model's version) in its results store, and `router report
--segment` breaks the phase down with capped values and corrected p-values: a candidate that
loses for one client only shows there, and nowhere else."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from statsmodels.stats.multitest import multipletests

from gamaserving.router.v1 import router_pb2 as rpb
from router.cli import main
from router.results.schema import exposure_dimensions
from tests.router.conftest import LiveRouter, base_config, live_router
from tests.support.audio import wav
from tests.support.experiments import two_arms
from tests.support.fault_server import fault_server

RARE = 24
LONG = "team-" + "z" * 95  # cut to 64 characters


def _cut_series(port: int) -> dict[tuple[str, str], float]:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.labels["experiment"], s.labels["dimension"]): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == "gamaserving_router_experiment_segment_values_cut_total"
    }


async def _traffic(router: LiveRouter, seed: int) -> None:
    """120 users on web and 120 on ios, two requests each; the candidate's answers on ios are
    accepted far less often. Then one request from each of RARE rare clients and the long
    value, and a few 6-second clips."""
    short, long_clip = wav(0.2), wav(6.0)

    async def one(user: str, client: str, clip: bytes = short, k: int = 0) -> None:
        answer = await router.stub.Process(
            rpb.ProcessRequest(audio=clip, task=rpb.TASK_TAG, user_id=user),
            metadata=[("x-client", client)],
            timeout=10,
        )
        worse = client == "ios" and answer.route.arm == "candidate"
        # Drawn from the request itself, not from the order the concurrent calls finish in:
        # the same outcomes, so the same p-values, every run.
        draw = random.Random(f"{seed}/{user}/{k}/{clip is short}").random()
        accepted = float(draw < (0.2 if worse else 0.8))
        await router.stub.RecordOutcome(
            rpb.RecordOutcomeRequest(
                request_id=answer.request_id, metric="accepted", value=accepted
            )
        )

    calls = [one(f"{c}-{i}", c, k=k) for c in ("web", "ios") for i in range(120) for k in range(2)]
    calls += [one(f"rare-user-{i}", f"rare-{i}") for i in range(RARE)]
    calls += [one("long-user", LONG)]
    calls += [one(f"web-{i}", "web", long_clip) for i in range(6)]
    for start in range(0, len(calls), 32):
        await asyncio.gather(*calls[start : start + 32])


async def test_segments_recorded_by_a_router_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = two_arms(
        dimensions=["x-client", "audio_duration", "model_version"],
        min_samples=20,
        cuped={"lookback_days": 14},
    )
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        cfg = base_config({"a": [a], "b": [b]}, tag={"primary": "a", "experiment": experiment})
        cfg["outcomes"] = {"accepted": {"kind": "binary"}}
        cfg["telemetry"] = {"prometheus_host": "127.0.0.1", "prometheus_port": 0}
        async with live_router(cfg, tmp_path) as router:
            await router.all_serving()
            await _traffic(router, 3)
            await router.flush()
            cut = await asyncio.to_thread(_cut_series, router.server.metrics_port)
            assert router.core.results is not None
            store = router.core.results.store
            longest = store.read(select(func.max(func.length(exposure_dimensions.c.value))))
            rpc = await router.admin.GetExperimentReport(
                rpb.GetExperimentReportRequest(experiment="ab", segment="x-client", html=True)
            )
            refusals = []
            for wrong in (
                rpb.GetExperimentReportRequest(experiment="ab", segment="x-team"),
                rpb.GetExperimentReportRequest(experiment="ab", correction="bonferroni"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await router.admin.GetExperimentReport(wrong)
                refusals.append((info.value.code(), info.value.details()))
            target = f"127.0.0.1:{router.server.port}"
            admin = ["admin", "--target", target, "report", "ab", "--segment", "x-client"]
            admin_code = await asyncio.to_thread(main, admin)
            admin_text = capsys.readouterr().out
            page = tmp_path / "admin-page.html"
            assert await asyncio.to_thread(main, [*admin[:5], "--html", str(page)]) == 0
            assert capsys.readouterr().out.strip() == f"wrote {page}"
            nowhere = str(tmp_path / "no-such-dir" / "page.html")
            assert await asyncio.to_thread(main, [*admin[:5], "--html", nowhere]) == 2
            unwritable = capsys.readouterr().err
    assert cut == {("ab", "x-client"): 1.0}
    assert longest[0][0] == 64
    config = str(tmp_path / "router.yaml")

    def report(*extra: str) -> dict[str, Any]:
        code = main(["report", "--config", config, "--experiment", "ab", "--json", *extra])
        said = capsys.readouterr()
        assert code == 0, said.err
        return json.loads(said.out)

    doc = report("--segment", "x-client")["segments"]
    by_value = {s["value"]: s for s in doc["segments"]}
    # web and ios, then 18 of the 25 one-request values; the other 7 pooled.
    assert doc["distinct_values"] == 2 + RARE + 1 and doc["pooled_as_other"] == RARE + 1 - 18
    assert len(by_value) == 21 and "other" in by_value
    assert sum(by_value["web"]["units"].values()) == 120
    assert sum(sum(s["counts"].values()) for s in doc["segments"]) == 480 + RARE + 1 + 6

    def accepted(segment: str) -> dict[str, Any]:
        (c,) = [c for c in by_value[segment]["comparisons"] if c["metric"] == "accepted"]
        return c

    ios, web = accepted("ios"), accepted("web")
    assert ios["difference"] < -0.4 and ios["adjusted_p_value"] < 0.001
    assert web["adjusted_p_value"] > 0.05
    assert by_value["ios"]["verdict"] != "PROMOTE"
    # Holm across the segments that have the comparison, as statsmodels computes it.
    found = [c for s in doc["segments"] for c in s["comparisons"] if c["metric"] == "accepted"]
    expected = multipletests([c["p_value"] for c in found], method="holm")[1]
    assert [c["adjusted_p_value"] for c in found] == pytest.approx(list(expected))
    bh = report("--segment", "x-client", "--correction", "bh")["segments"]
    assert bh["correction"] == "bh"
    (ios_bh,) = [c for s in bh["segments"] if s["value"] == "ios"
                 for c in s["comparisons"] if c["metric"] == "accepted"]  # fmt: skip
    assert ios_bh["adjusted_p_value"] <= ios["adjusted_p_value"]  # BH never adjusts more

    durations = report("--segment", "audio_duration")["segments"]["segments"]
    assert {s["value"]: sum(s["counts"].values()) for s in durations} == {
        "0-5s": 480 + RARE + 1,
        "5-15s": 6,
    }
    (version,) = report("--segment", "model_version")["segments"]["segments"]
    assert version["value"] == "fault-1"

    # RouterAdmin answers with the same document, CUPED and segments included.
    full = report("--segment", "x-client")
    assert rpc.verdict == full["verdict"] and list(rpc.reasons) == full["reasons"]
    assert {a.name: (a.users, a.count) for a in rpc.arms} == {
        arm: (full["units"][arm], n) for arm, n in full["counts"].items()
    }
    for got, want in zip(rpc.comparisons, full["comparisons"], strict=True):
        assert (got.metric, got.difference) == (want["metric"], pytest.approx(want["difference"]))
        assert got.unadjusted.difference == pytest.approx(want["unadjusted"]["difference"])
        assert got.cuped.variance_reduction == pytest.approx(want["cuped"]["variance_reduction"])
    wire = {s.value: {c.metric: c.adjusted_p_value for c in s.comparisons}
            for s in rpc.segments.segments}  # fmt: skip
    assert wire == {s["value"]: {c["metric"]: pytest.approx(c["adjusted_p_value"])
                                 for c in s["comparisons"]} for s in doc["segments"]}  # fmt: skip
    assert rpc.segments.pooled_as_other == doc["pooled_as_other"]
    assert "<h2>Segments by x-client</h2>" in rpc.html
    assert [code for code, _ in refusals] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert "records no such dimension" in refusals[0][1] and "holm or bh" in refusals[1][1]
    assert admin_code == 0 and "CUPED VARIANCE" in admin_text
    assert "segments by x-client: 21 shown" in admin_text
    assert "<h2>Segments by x-client</h2>" in page.read_text()
    assert "No such file or directory" in unwritable and "Traceback" not in unwritable

    # The table, and a dimension the experiment does not record.
    assert main(["report", "--config", config, "--experiment", "ab", "--segment", "x-client"]) == 0
    text = capsys.readouterr().out
    assert "segments by x-client: 21 shown, p-values corrected by Holm" in text
    assert "7 of 27 values are pooled as `other`" in text
    assert main(["report", "--config", config, "--experiment", "ab", "--segment", "x-team"]) == 2
    err = capsys.readouterr().err
    assert "records no such dimension; its dimensions: x-client, audio_duration" in err
    # The page holds every dimension's table.
    page = tmp_path / "page.html"
    assert main(["report", "--config", config, "--experiment", "ab", "--html", str(page)]) == 0
    html = page.read_text()
    for name in ("x-client", "audio_duration", "model_version"):
        assert f"<h2>Segments by {name}</h2>" in html
