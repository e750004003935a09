"""The router against real model-server processes: every task, every response field, bad
input, load shedding, configuration errors at start, and the admin API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from gamaserving.router.v1 import router_pb2 as rpb
from router.server import StartupError
from tests.router.conftest import base_config, live_router
from tests.support.audio import tone, wav
from tests.support.processes import ServerProcess, free_port
from tests.support.waiting import until


def config(servers: dict[str, ServerProcess], **extra: object) -> dict[str, object]:
    cfg = base_config(
        {name: [s.address] for name, s in servers.items()},
        transcribe={"primary": "wav2vec2"},
        tag={"primary": "gama"},
        describe={"primary": "gama", "quality": {"slo_ms": 5000}},
        embed={
            "primary": "wav2vec2",
            "fallbacks": ["gama"],
            "experiment": {
                "name": "embed-ab",
                "seed": "phase-1",
                "coverage": 1.0,
                "arms": [
                    {"name": "control", "model": "wav2vec2", "weight": 0.5},
                    {"name": "candidate", "model": "gama", "weight": 0.5},
                ],
                "allowlist": {"qa": "candidate"},
            },
        },
    )
    cfg.update(extra)
    return cfg


async def test_every_task_fills_the_response(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    async with live_router(config(model_servers), tmp_path) as router:
        t = await router.process(rpb.TASK_TRANSCRIBE, wav(1.0), request_id="req-1")
        assert (
            t.request_id == "req-1"
            and t.route.model == "wav2vec2"
            and t.route.model_version == "tiny-1"
        )
        assert (
            t.quality.passed
            and t.timings.total_ms > 0
            and t.timings.model_ms > 0
            and t.timings.compute_ms > 0
        )
        assert t.route.attempts[0].outcome == "ok" and not t.route.fallback_used

        tag = await router.process(rpb.TASK_TAG, wav(2.0))
        # GAMA's tags are the labels its answer names (the tiny model names some for this
        # clip; tests/modelserver/test_infer.py checks them against its answer).
        assert tag.route.model == "gama" and len(tag.patterns) >= 1
        assert all(0 <= p.score <= 1 for p in tag.patterns)

        emb = await router.process(rpb.TASK_EMBED, wav(1.0), user_id="qa")
        assert (emb.route.experiment, emb.route.arm, emb.route.model) == (
            "embed-ab",
            "candidate",
            "gama",
        )
        assert len(emb.features) == 128  # the tiny GAMA's audio width

        d = await router.process(rpb.TASK_DESCRIBE, wav(1.0), prompt="What do you hear?")
        assert d.text.strip() and d.route.model == "gama" and d.quality.passed
        assert t.request_id != d.request_id and len(d.request_id) == 32  # generated

        pcm = tone(0.5, rate=8000)
        raw = await router.stub.Process(
            rpb.ProcessRequest(
                raw_audio=rpb.RawAudio(pcm_f32le=pcm.tobytes(), sample_rate=8000),
                task=rpb.TASK_EMBED,
            )
        )
        # No user id: the request id (generated) is the unit, so either arm may answer.
        assert len(raw.features) == {"wav2vec2": 64, "gama": 128}[raw.route.model]


async def test_user_id_from_metadata_is_sticky(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    async with live_router(config(model_servers), tmp_path) as router:
        arms = set()
        for _ in range(3):
            call = router.stub.Process(
                rpb.ProcessRequest(audio=wav(0.5), task=rpb.TASK_EMBED),
                metadata=(("x-user-id", "qa"),),
            )
            arms.add((await call).route.arm)
        assert arms == {"candidate"}


@pytest.mark.parametrize(
    ("request_fields", "needle"),
    [
        ({"task": rpb.TASK_EMBED}, "no audio"),
        ({"audio": b"RIFF", "task": rpb.TASK_UNSPECIFIED}, "task must be one of"),
        ({"audio": b"RIFF", "task": 42}, "task must be one of"),
        (
            {
                "audio": b"x",
                "raw_audio": rpb.RawAudio(pcm_f32le=b"\0" * 8, sample_rate=16000),
                "task": 3,
            },
            "not both",
        ),
        (
            {"raw_audio": rpb.RawAudio(pcm_f32le=b"\0" * 7, sample_rate=16000), "task": 3},
            "multiple of 4",
        ),
        ({"raw_audio": rpb.RawAudio(pcm_f32le=b"\0" * 8, sample_rate=0), "task": 3}, "sample_rate"),
        ({"audio": b"RIFF", "task": rpb.TASK_DESCRIBE}, "needs a prompt"),
        ({"audio": b"not audio at all", "task": rpb.TASK_EMBED}, "could not be decoded"),
    ],
)
async def test_bad_input_is_invalid_argument_without_fallback(
    model_servers: dict[str, ServerProcess],
    tmp_path: Path,
    request_fields: dict[str, object],
    needle: str,
) -> None:
    async with live_router(config(model_servers), tmp_path) as router:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await router.stub.Process(rpb.ProcessRequest(**request_fields), timeout=5)  # type: ignore[arg-type]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (info.value.details() or "")
        assert router.core.stats.fallbacks == {}
        ok = await router.process(rpb.TASK_TRANSCRIBE, wav(0.5))
        assert ok.quality.passed


async def test_a_request_over_a_models_limits_is_the_callers_fault(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    """Over the model's limits: INVALID_ARGUMENT in words the caller can act on, never another
    model tried; refused by the router before sending where the metadata shows it."""
    cfg = config(model_servers)
    cfg["routes"]["embed"] = {"primary": "wav2vec2", "fallbacks": ["gama"]}  # type: ignore[index]
    async with live_router(cfg, tmp_path) as router:
        await router.all_serving()
        assert router.core.state is not None
        backend = router.core.state.backends["wav2vec2"]
        await until(lambda: backend.info is not None, "wav2vec2's metadata")
        assert backend.info.limits.max_audio_bytes == 16 * 1024 * 1024
        long_pcm = rpb.RawAudio(pcm_f32le=tone(31.0).astype("<f4").tobytes(), sample_rate=16000)
        for fields, needle in [
            # The router cannot decode a file: the model server says it, the router passes it on.
            ({"audio": wav(31.0)}, "wav2vec2: audio is 31.00 s long; this model accepts at most"),
            # What the metadata shows, the router refuses before sending.
            ({"raw_audio": long_pcm}, "audio is 31.00 s long; model wav2vec2 accepts at most 30 s"),
            ({"audio": b"RIFF" + b"\0" * (17 * 1024 * 1024)},
             "the AUDIO file is 17825796 bytes; model wav2vec2 accepts at most 16777216 bytes"),
        ]:  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await router.stub.Process(
                    rpb.ProcessRequest(task=rpb.TASK_EMBED, **fields),  # type: ignore[arg-type]
                    timeout=10,
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in (info.value.details() or ""), info.value.details()
        assert router.core.stats.fallbacks == {}


async def test_in_flight_limit_sheds_with_resource_exhausted(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    cfg = config(model_servers)
    cfg["server"]["max_in_flight"] = 2  # type: ignore[index]
    async with live_router(cfg, tmp_path) as router:
        calls = [
            router.process(rpb.TASK_DESCRIBE, wav(1.0), prompt="Tell me everything.")
            for _ in range(12)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
        assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert sum(not isinstance(r, Exception) for r in results) >= 2
        assert router.server.admission is not None and router.server.admission.shed >= 1


async def test_admin_lists_experiments_and_quality(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    async with live_router(config(model_servers), tmp_path) as router:
        await router.process(rpb.TASK_TAG, wav(0.5))
        experiments = (await router.admin.ListExperiments(rpb.ListExperimentsRequest())).experiments
        assert [(e.name, e.task, e.coverage) for e in experiments] == [
            ("embed-ab", rpb.TASK_EMBED, 1.0)
        ]
        assert [(a.name, a.model, a.weight) for a in experiments[0].arms] == [
            ("control", "wav2vec2", 0.5),
            ("candidate", "gama", 0.5),
        ]
        report = await router.admin.GetQualityReport(rpb.GetQualityReportRequest(model="gama"))
        checks = {c.check: c for c in report.checks}
        assert (
            checks["patterns.score_range"].total == 1
            and checks["patterns.score_range"].pass_rate == 1
        )
        report = await router.admin.GetExperimentReport(
            rpb.GetExperimentReportRequest(experiment="embed-ab")
        )
        assert report.verdict == "KEEP_RUNNING" and report.control_arm == "control"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await router.admin.GetExperimentReport(rpb.GetExperimentReportRequest())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_arm_whose_model_cannot_do_the_task_is_rejected_at_start(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    cfg = config(model_servers)
    cfg["routes"]["describe"] = {  # type: ignore[index]
        "primary": "gama",
        "experiment": {
            "name": "x",
            "seed": "s",
            "arms": [{"name": "a", "model": "wav2vec2", "weight": 1.0}],
        },
    }
    with pytest.raises(StartupError) as info:
        async with live_router(cfg, tmp_path):
            pass
    assert "routes.describe.experiment.arms[0].model: model 'wav2vec2' cannot describe" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            {"routes": {"tag": {"primary": "whisper"}}},
            "routes.tag.primary: unknown model 'whisper'",
        ),
        (
            {
                "routes": {
                    "embed": {
                        "primary": "gama",
                        "experiment": {
                            "name": "e",
                            "seed": "s",
                            "arms": [
                                {"name": "a", "model": "gama", "weight": 0.6},
                                {"name": "b", "model": "wav2vec2", "weight": 0.6},
                            ],
                        },
                    }
                }
            },
            "routes.embed.experiment: arms: weights sum to 1.2, not 1",
        ),
        ({"routes": {"sing": {"primary": "gama"}}}, "routes.sing"),
        ({"models": {"gama": {"endpoints": ["localhost"]}}}, "models.gama.endpoints"),
        ({"server": {"max_in_flight": 0}}, "server.max_in_flight"),
    ],
)
async def test_invalid_files_are_rejected_naming_the_field(
    tmp_path: Path, edit: dict[str, object], needle: str
) -> None:
    cfg = base_config(
        {"gama": [f"127.0.0.1:{free_port()}"], "wav2vec2": [f"127.0.0.1:{free_port()}"]},
        tag={"primary": "gama"},
    )
    for key, value in edit.items():
        cfg[key] = {**cfg.get(key, {}), **value}  # type: ignore[dict-item]
    with pytest.raises(StartupError) as info:
        async with live_router(cfg, tmp_path, metadata_wait=0.1):
            pass
    assert needle in str(info.value)


def example_config(servers: dict[str, ServerProcess]) -> dict[str, object]:
    """config/router.yaml as shipped, pointed at this run's model-server ports."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[2] / "config" / "router.yaml").read_text())
    for name, server in servers.items():
        cfg["models"][name]["endpoints"] = [server.address]
    cfg["server"]["port"] = 0
    return cfg  # type: ignore[no-any-return]


async def test_the_example_configuration_serves_every_task(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    async with live_router(example_config(model_servers), tmp_path) as router:
        for task, model in [
            (rpb.TASK_TRANSCRIBE, "wav2vec2"),
            (rpb.TASK_TAG, "gama"),
            (rpb.TASK_DESCRIBE, "gama"),
        ]:
            response = await router.process(task, wav(1.0), prompt="What do you hear?")
            assert response.route.model == model and response.quality.passed
        forced = await router.process(rpb.TASK_EMBED, wav(1.0), user_id="qa-team")
        assert (forced.route.experiment, forced.route.arm, forced.route.model) == (
            "embed-gama",
            "candidate",
            "gama",
        )


async def test_replicas_and_restarts_assign_every_user_the_same_arm(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    users = [f"user-{i}" for i in range(60)]
    cfg = config(model_servers)

    for name in "abc":
        (tmp_path / name).mkdir()

    async def arms(directory: Path) -> list[str]:
        async with live_router(cfg, directory) as router:
            return [
                (await router.process(rpb.TASK_EMBED, wav(0.3), user_id=u)).route.arm for u in users
            ]

    first, second = await asyncio.gather(arms(tmp_path / "a"), arms(tmp_path / "b"))
    restarted = await arms(tmp_path / "c")
    assert first == second == restarted
    assert {"control", "candidate"} <= set(first)
