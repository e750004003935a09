"""Model server: served over gRPC against the same core called in process, at concurrency 1, 8
and 32, with dynamic batching on and off; one run, one machine, same model and inputs.

    python -m benchmarks.modelserver --models models --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

from benchmarks.common import Load, closed_loop, machine, write_section
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.oip import param_value
from modelserver.config import Task, load_model_config
from modelserver.core import InferenceCore
from modelserver.lifecycle import Lifecycle, ModelState
from modelserver.messages import TASK_OUTPUTS, AudioPayload, InferRequest
from tests.support.audio import wav
from tests.support.oip import infer_request
from tests.support.processes import ServerProcess, free_port, modelserver_args

CONCURRENCY = (1, 8, 32)
MODELS = (("wav2vec2", Task.TRANSCRIBE), ("gama", Task.EMBED))


def _model_copy(src: Path, dst: Path, batching: bool) -> Path:
    shutil.copytree(src, dst)
    config = yaml.safe_load((dst / "model.yaml").read_text())
    config["batching"] = {
        **config.get("batching", {}),
        "max_batch_size": 16 if batching else 1,
        "max_queue_size": 1024,
    }
    (dst / "model.yaml").write_text(yaml.safe_dump(config))
    return dst


async def in_process(
    model_dir: Path, task: Task, clip: bytes, concurrency: int, seconds: float
) -> Load:
    config = load_model_config(model_dir)
    lifecycle = Lifecycle(config.name)
    core = InferenceCore(config, lifecycle)
    await core.load(model_dir, "auto")
    lifecycle.set_state(ModelState.READY)
    request = InferRequest("bench", task, AudioPayload(encoded=clip), frozenset(TASK_OUTPUTS[task]))

    async def call() -> int:
        return (await core.infer(request, deadline=None)).batch_size

    try:
        return await closed_loop(call, concurrency, seconds)
    finally:
        await core.close()


async def served(
    address: str, model: str, task: Task, clip: bytes, concurrency: int, seconds: float
) -> Load:
    request = infer_request(model, audio=clip, task=task.value)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call() -> int:
            response = await stub.ModelInfer(request)
            return int(param_value(response.parameters["batch_size"]) or 1)

        return await closed_loop(call, concurrency, seconds)


def run(
    models: Path,
    seconds: float,
    only: str | None = None,
    concurrency: tuple[int, ...] = CONCURRENCY,
) -> list[dict[str, Any]]:
    clip = wav(1.0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, task in MODELS:
            if only and name != only:
                continue
            for batching in (True, False):
                model_dir = _model_copy(models / name, Path(tmp) / f"{name}-{batching}", batching)
                port = free_port()
                server = ServerProcess(
                    modelserver_args(model_dir, port), Path(tmp) / f"{name}.log", port
                ).start()
                try:
                    server.wait_status()
                    for c in concurrency:
                        local = asyncio.run(in_process(model_dir, task, clip, c, seconds))
                        remote = asyncio.run(served(server.address, name, task, clip, c, seconds))
                        rows.append(
                            {
                                "model": name,
                                "task": task.value,
                                "batching": batching,
                                "c": c,
                                "in": local,
                                "grpc": remote,
                            }
                        )
                        print(_md_row(_cells(rows[-1])), flush=True)
                finally:
                    server.stop()
    return rows


HEADER = [
    "model (task)",
    "batching",
    "concurrency",
    "in-process req/s",
    "served req/s",
    "served / in-process",
    "in-process p50 / p99 ms",
    "served p50 / p99 ms",
    "mean batch (served)",
]


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cells(r: dict[str, Any]) -> list[str]:
    a, b = r["in"], r["grpc"]
    return [
        f"{r['model']} ({r['task']})",
        "on" if r["batching"] else "off",
        str(r["c"]),
        f"{a.throughput:.1f}",
        f"{b.throughput:.1f}",
        f"**{b.throughput / a.throughput:.2f}**",
        f"{a.p50_ms:.1f} / {a.p99_ms:.1f}",
        f"{b.p50_ms:.1f} / {b.p99_ms:.1f}",
        f"{b.mean_batch:.1f}",
    ]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [_md_row(HEADER), _md_row(["---"] * 2 + ["---:"] * 7)]
    lines += [_md_row(_cells(r)) for r in rows]
    lines += ["", "Batching on against off, served, same run:", ""]
    lines += [_md_row(["model", "concurrency", "req/s on / off", "p50 on / off"])]
    lines += [_md_row(["---", "---:", "---:", "---:"])]
    index = {(r["model"], r["batching"], r["c"]): r["grpc"] for r in rows}
    for name, _ in MODELS:
        for c in CONCURRENCY:
            on, off = index[(name, True, c)], index[(name, False, c)]
            ratio = f"**{on.throughput / off.throughput:.2f}**"
            lines.append(_md_row([name, str(c), ratio, f"{on.p50_ms / off.p50_ms:.2f}"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--only", default=None, help="one model, for a quick look (writes nothing)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = parser.parse_args()
    rows = run(args.models, args.seconds, args.only, tuple(args.concurrency))
    if args.only or tuple(args.concurrency) != CONCURRENCY:
        return
    body = "\n".join(
        [
            "## Model server: served over gRPC against in-process",
            "",
            f"`make bench` (`python -m benchmarks.modelserver`), {time.strftime('%Y-%m-%d')},",
            f"{machine()}, device cpu. Closed loop: each client sends its next request when the",
            f"last returns; {args.seconds:g} s per cell after 5 warm-up calls. Input: one 1.0 s",
            "16 kHz WAV clip (AUDIO).",
            "In-process calls the same `InferenceCore` (decode, batcher, model) with no gRPC;",
            "served runs `modelserver serve` as a separate process and calls it over loopback.",
            "",
            table(rows),
        ]
    )
    write_section(args.out, "modelserver", body)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
