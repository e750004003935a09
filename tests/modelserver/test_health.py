"""grpc.health.v1 semantics: readiness follows loading, warm-up, faults and drain; liveness
follows a stuck inference worker. Process-level checks run `modelserver serve` for real."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.modelserver.conftest import HeldWorker, LiveFactory
from tests.support.audio import wav
from tests.support.oip import infer_request, outputs
from tests.support.processes import ServerProcess, free_port, modelserver_args

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def _until(channel: grpc.aio.Channel, service: str, want: int, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while (status := await _status(channel, service)) != want:
        assert time.monotonic() < deadline, f"{service} stayed {status}"
        await asyncio.sleep(0.05)


async def test_not_serving_until_loaded_and_warm(serve: LiveFactory, tiny_models: Path) -> None:
    async with serve(tiny_models / "wav2vec2", load=False) as live:
        for name in ("readiness", "inference.GRPCInferenceService"):
            assert await _status(live.channel, name) == NOT_SERVING
        for name in ("", "liveness"):
            assert await _status(live.channel, name) == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await live.stub.ModelInfer(infer_request("wav2vec2", audio=wav()))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in (
            info.value.details() or ""
        )
        await live.server.load()
        await _until(live.channel, "readiness", SERVING)


async def test_liveness_turns_bad_when_the_worker_is_stuck(
    serve: LiveFactory, tiny_models: Path
) -> None:
    async with serve(tiny_models / "wav2vec2", settings={"stuck_after_seconds": 0.3}) as live:
        worker = HeldWorker(live)
        call = asyncio.ensure_future(live.stub.ModelInfer(infer_request("wav2vec2", audio=wav())))
        await worker.entered()
        await _until(live.channel, "liveness", NOT_SERVING)
        assert await _status(live.channel, "") == NOT_SERVING
        worker.release()
        await call
        await _until(live.channel, "liveness", SERVING)


async def test_repeated_faults_take_readiness_down_until_a_self_test_passes(
    serve: LiveFactory, tiny_models: Path
) -> None:
    async with serve(
        tiny_models / "wav2vec2", settings={"fault_threshold": 2, "self_test_seconds": 0.2}
    ) as live:
        assert live.core.batcher is not None
        real = live.core.batcher._run_batch
        broken = [True]

        def flaky(items: list) -> list:  # type: ignore[type-arg]
            if broken[0]:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return real(items)

        live.core.batcher._run_batch = flaky
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await live.stub.ModelInfer(infer_request("wav2vec2", audio=wav()))
            assert info.value.code() == grpc.StatusCode.INTERNAL
        await _until(live.channel, "readiness", NOT_SERVING)
        assert await _status(live.channel, "liveness") == SERVING
        broken[0] = False
        await _until(live.channel, "readiness", SERVING)


def _slow_gama(tiny_models: Path, tmp_path: Path, warmup_iterations: int) -> Path:
    model_dir = tmp_path / "gama-slow"
    shutil.copytree(tiny_models / "gama", model_dir)
    config = yaml.safe_load((model_dir / "model.yaml").read_text())
    config["warmup"] = {"iterations": warmup_iterations, "seconds": 1.0}
    config["batching"] = {"max_batch_size": 1, "max_queue_delay_ms": 0, "max_queue_size": 64}
    # One answer at a time, so that many are still waiting or decoding at SIGTERM.
    config["continuous_batching"] = {"max_sequences": 1, "max_waiting": 64}
    (model_dir / "model.yaml").write_text(yaml.safe_dump(config))
    return model_dir


def test_process_lifecycle_watch_and_sigterm_drain(tiny_models: Path, tmp_path: Path) -> None:
    """Watch: NOT_SERVING (loading, warming) -> SERVING -> NOT_SERVING on SIGTERM, while the
    requests in flight at SIGTERM still complete, new ones are refused, and the exit code is 0."""
    port = free_port()
    server = ServerProcess(
        modelserver_args(_slow_gama(tiny_models, tmp_path, 3), port, "--grace-seconds", "30"),
        tmp_path / "server.log",
        port,
    )
    seen: list[int] = []
    watching = threading.Event()

    def watch() -> None:
        with grpc.insecure_channel(server.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="readiness")
            )
            watching.set()
            try:
                for update in stream:
                    if not seen or seen[-1] != update.status:
                        seen.append(update.status)
            except grpc.RpcError:
                pass  # the server went away

    server.start()
    try:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert watching.wait(30), server.log()
        server.wait_status("readiness", SERVING, timeout=60)

        from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc

        slow = infer_request(
            "gama", audio=wav(0.5), task="describe", prompt="Tell me everything.", max_new_tokens=32
        )
        finished: list[float] = []
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            in_flight = [stub.ModelInfer.future(slow, timeout=60) for _ in range(40)]
            for call in in_flight:
                call.add_done_callback(lambda _: finished.append(time.monotonic()))
            while not finished:
                time.sleep(0.01)
            server.signal(signal.SIGTERM)
            sigterm_at = time.monotonic()
            time.sleep(0.2)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(slow, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            answered, refused = [], 0
            for call in in_flight:
                try:
                    answered.append(outputs(call.result()))
                except grpc.RpcError as exc:
                    # Not yet started at SIGTERM: refused as draining, retryable elsewhere.
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    assert "draining" in (exc.details() or "")
                    refused += 1
        assert len(answered) + refused == 40
        assert all(len(a["TEXT"][0]) > 0 for a in answered)
        assert max(finished) > sigterm_at + 0.1, "no request was still in flight at SIGTERM"
        assert server.wait(30) == 0, server.log()
        watcher.join(10)
        assert seen[:3] == [NOT_SERVING, SERVING, NOT_SERVING], seen
        assert "draining" in server.log()
    finally:
        server.stop()


def test_invalid_model_dir_fails_at_start_naming_the_problem(
    tiny_models: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad"
    shutil.copytree(tiny_models / "wav2vec2", bad)
    config = yaml.safe_load((bad / "model.yaml").read_text())
    config["batching"] = {"max_batch_size": 0}
    config["runtime"] = "tensorrt"
    (bad / "model.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "modelserver.cli", "serve", "--model-dir", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "runtime" in result.stderr and "batching.max_batch_size" in result.stderr
    assert np.char.count(result.stderr, "Traceback") == 0
