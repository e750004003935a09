"""Our wav2vec2 server against MLServer 1.7.1 on the same ONNX file, doing the same work per
request (10 s of 16 kHz float32 in, greedy CTC text out), both with dynamic batching up to 16
and a 2 ms window, both over gRPC with raw tensor contents. Closed-loop clients at c=8; the two
servers take turns round by round in one run, so both see the same machine; the throughput
ratio's interval resamples rounds (bootstrap).

MLServer runs in a venv of its own (it pins its own grpcio and pydantic), made on first use:

    python -m benchmarks.mlserver_compare --model-dir DIR [--mlserver-venv /var/tmp/mlserver-venv]

DIR is a wav2vec2 model directory of ours (`modelserver export`), for example the rehearsal's
full-size wav2vec2-base.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.common import Load, closed_loop, machine, merge, write_section
from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.oip import param_value
from modelserver.config import load_model_config
from tests.support.processes import ServerProcess, free_port, modelserver_args

MLSERVER_VERSION = "1.7.1"
RUNTIME = Path(__file__).with_name("mlserver_onnx") / "runtime.py"
SAMPLE_RATE = 16_000
CLIP_SECONDS = 10.0
MAX_BATCH, WINDOW_S = 16, 0.002
BOOTSTRAP_DRAWS = 2000


def mlserver_venv(venv: Path) -> Path:
    """MLServer's own venv, with the onnxruntime this project pins."""
    binary = venv / "bin" / "mlserver"
    if not binary.exists():
        import onnxruntime

        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # uvloop 0.22 and later refuse asyncio.get_event_loop() outside a running loop, which
        # MLServer 1.7.1's inference-pool workers call at start: they die, and no model loads.
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                        f"mlserver=={MLSERVER_VERSION}", "uvloop<0.22",
                        f"onnxruntime=={onnxruntime.__version__}"], check=True)  # fmt: skip
    return binary


def mlserver_model(model_dir: Path, root: Path, grpc_port: int) -> Path:
    """MLServer's model repository: settings, model settings and the runtime beside them."""
    config = load_model_config(model_dir)
    assert config.wav2vec2 is not None
    model = root / "wav2vec2"
    model.mkdir(parents=True)
    shutil.copy(RUNTIME, model / "runtime.py")
    settings = {
        "name": "wav2vec2",
        "implementation": "runtime.OnnxWav2Vec2",
        "max_batch_size": MAX_BATCH,
        "max_batch_time": WINDOW_S,
        "parameters": {
            "uri": str((model_dir / config.artifact).resolve()),
            "extra": {
                "vocab": config.wav2vec2.vocab,
                "blank_id": config.wav2vec2.blank_id,
                "delimiter": config.wav2vec2.word_delimiter,
            },
        },
    }
    (model / "model-settings.json").write_text(json.dumps(settings))
    server = {"grpc_port": grpc_port, "http_port": free_port(), "metrics_port": free_port(),
              "host": "127.0.0.1"}  # fmt: skip
    (root / "settings.json").write_text(json.dumps(server))
    return root


def our_model(model_dir: Path, dst: Path) -> Path:
    import yaml

    shutil.copytree(model_dir, dst)
    raw = yaml.safe_load((dst / "model.yaml").read_text())
    raw["batching"] = {"max_batch_size": MAX_BATCH, "max_queue_delay_ms": WINDOW_S * 1000,
                       "max_queue_size": 1024}  # fmt: skip
    (dst / "model.yaml").write_text(yaml.safe_dump(raw))
    return dst


def request(ours: bool) -> pb.ModelInferRequest:
    t = np.arange(int(CLIP_SECONDS * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE
    noise = np.random.default_rng(0).standard_normal(t.shape).astype(np.float32)
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * noise).astype("<f4")
    req = pb.ModelInferRequest(model_name="wav2vec2")
    req.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, wave.shape[0]])
    req.raw_input_contents.append(wave.tobytes())
    if ours:
        req.parameters["task"].string_param = "transcribe"
        req.parameters["sample_rate"].int64_param = SAMPLE_RATE
    return req


async def load(address: str, ours: bool, concurrency: int, seconds: float) -> Load:
    req = request(ours)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call() -> int:
            response = await stub.ModelInfer(req)
            if not response.outputs or response.outputs[0].name != "TEXT":
                raise RuntimeError(f"{address}: no TEXT in the answer")
            batch = response.parameters.get("batch_size")
            return int(param_value(batch) or 1) if batch is not None else 1

        return await closed_loop(call, concurrency, seconds, warmup=2)


def wait_mlserver(address: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.ModelReady(pb.ModelReadyRequest(name="wav2vec2"), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"MLServer at {address} never became ready")


def ratio_interval(ours: list[Load], theirs: list[Load]) -> tuple[float, float, float]:
    """Throughput ours / theirs, and its 95% interval over rounds resampled in pairs."""
    rng = np.random.default_rng(0)
    a = np.array([x.throughput for x in ours])
    b = np.array([x.throughput for x in theirs])
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        pick = rng.integers(0, len(a), len(a))
        draws.append(a[pick].mean() / b[pick].mean())
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(a.mean() / b.mean()), float(low), float(high)


def run(model_dir: Path, venv: Path, concurrency: int, seconds: float, rounds: int) -> str:
    binary = mlserver_venv(venv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ml_port, our_port = free_port(), free_port()
        repo = mlserver_model(model_dir, root / "mlserver", ml_port)
        mlserver = subprocess.Popen([str(binary), "start", str(repo)], cwd=repo,
                                    stdout=(root / "mlserver.log").open("wb"),
                                    stderr=subprocess.STDOUT)  # fmt: skip
        ours = ServerProcess(modelserver_args(our_model(model_dir, root / "ours"), our_port),
                             root / "ours.log", our_port)  # fmt: skip
        ours.start()
        try:
            ours.wait_status(timeout=300)
            wait_mlserver(f"127.0.0.1:{ml_port}")
            results: dict[str, list[Load]] = {"ours": [], "mlserver": []}
            for r in range(rounds):
                order = ("ours", "mlserver") if r % 2 == 0 else ("mlserver", "ours")
                for name in order:
                    address = f"127.0.0.1:{our_port if name == 'ours' else ml_port}"
                    got = asyncio.run(load(address, name == "ours", concurrency, seconds))
                    results[name].append(got)
                    print(f"round {r} {name}: {got.throughput:.2f}/s p50 {got.p50_ms:.0f} ms "
                          f"batch {got.mean_batch:.1f}", flush=True)  # fmt: skip
        finally:
            ours.stop()
            mlserver.terminate()
            try:
                mlserver.wait(30)
            except subprocess.TimeoutExpired:
                mlserver.kill()
    ratio, low, high = ratio_interval(results["ours"], results["mlserver"])
    rows = []
    for name in ("ours", "mlserver"):
        pooled = merge(results[name])
        # MLServer does not report its batch sizes.
        batch = f"{pooled.mean_batch:.1f}" if name == "ours" else "n/a"
        rows.append(f"| {name} | {pooled.throughput:.2f} | {pooled.p50_ms:.0f} / "
                    f"{pooled.p99_ms:.0f} | {batch} |")  # fmt: skip
    print(f"ours / MLServer throughput at c={concurrency}: {ratio:.2f} ({low:.2f}-{high:.2f})")
    return "\n".join([
        "| server | clips/s | p50 / p99 ms | mean batch |", "| --- | ---: | ---: | ---: |",
        *rows, "",
        f"**ours / MLServer throughput at c={concurrency}: {ratio:.2f}** "
        f"(95% bootstrap interval over {rounds} rounds: {low:.2f}-{high:.2f})",
    ])  # fmt: skip


def _size(model_dir: Path) -> str:
    """What the table's title says of the model: its ONNX file's size (wav2vec2-base: 377 MB)."""
    return f"ONNX, {sum(p.stat().st_size for p in model_dir.glob('*.onnx')) / 1e6:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--mlserver-venv", type=Path, default=Path("/var/tmp/mlserver-venv"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0, help="per round and server")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, help="write the table into this benchmarks page")
    args = parser.parse_args()
    table = run(args.model_dir, args.mlserver_venv, args.concurrency, args.seconds, args.rounds)
    print(table)
    if args.out:
        write_section(args.out, "mlserver", "\n".join([
            f"## wav2vec2 ({_size(args.model_dir)}) against MLServer {MLSERVER_VERSION}", "",
            f"`python -m benchmarks.mlserver_compare --model-dir {args.model_dir}`, "
            f"{time.strftime('%Y-%m-%d')}, {machine()}. {CLIP_SECONDS:g} s clips, closed loop, "
            f"{args.rounds} rounds of {args.seconds:g} s per server, alternating.", "",
            table, ""]))  # fmt: skip


if __name__ == "__main__":
    main()
