"""Continuous against static batching for GAMA's describe, side by side in one run: the tiny
GAMA served twice (`continuous_batching.enabled` true and false), closed-loop clients over
ModelStreamInfer asking for a mix of short (8) and long (128) answers.

    python -m benchmarks.generation --models models --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml
from transformers import AutoTokenizer

from benchmarks.common import machine, write_section
from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.oip import param_value
from tests.support.audio import wav
from tests.support.oip import infer_request, outputs
from tests.support.processes import ServerProcess, free_port, modelserver_args

SHORT, LONG = 8, 128
CONCURRENCY = (1, 8, 32)
PROMPT = "Describe the audio in detail."
MAX_BATCH = 32


@dataclass
class Cell:
    seconds: float = 0.0
    tokens: int = 0
    first_ms: list[float] = field(default_factory=list)
    short_ms: list[float] = field(default_factory=list)

    def p(self, values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")


def _serving_copy(src: Path, dst: Path, continuous: bool) -> Path:
    shutil.copytree(src, dst)
    config = yaml.safe_load((dst / "model.yaml").read_text())
    config["gama"]["generation"]["max_new_tokens"] = LONG
    config["batching"] = {"max_batch_size": MAX_BATCH, "max_queue_size": 1024}
    config["continuous_batching"] = {
        "enabled": continuous,
        "max_sequences": MAX_BATCH,
        "max_waiting": 1024,
    }
    (dst / "model.yaml").write_text(yaml.safe_dump(config))
    return dst


async def _one(request: pb.ModelInferRequest) -> AsyncIterator[pb.ModelInferRequest]:
    yield request


async def load(
    address: str, tokenizer: Any, concurrency: int, seconds: float, pattern: str
) -> Cell:
    """`concurrency` closed-loop clients. `mix`: each alternates short and long answers (half
    of them start with a long one); `short`: short answers only; `beside`: client 0 asks for
    short answers, the others for long ones."""
    clip = wav(2.0)
    cell = Cell()
    counter = iter(range(10**9))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call(tokens: int) -> tuple[float, float, int]:
            request = infer_request(
                "gama",
                audio=clip,
                task="describe",
                prompt=PROMPT,
                max_new_tokens=tokens,
                request_id=f"bench-{next(counter)}",
            )
            start = time.perf_counter()
            first = None
            text: list[str] = []
            async for reply in stub.ModelStreamInfer(_one(request)):
                if reply.error_message:
                    raise RuntimeError(reply.error_message)
                first = first or time.perf_counter()
                response = reply.infer_response
                if "TEXT" in {o.name for o in response.outputs}:
                    text.append(str(outputs(response)["TEXT"][0].decode()))
                flag = response.parameters.get("triton_final_response")
                if flag is not None and param_value(flag) is True:
                    break
            end = time.perf_counter()
            assert first is not None
            count = len(tokenizer("".join(text), add_special_tokens=False)["input_ids"])
            return (first - start) * 1000, (end - start) * 1000, count

        for tokens in (SHORT, LONG):
            await call(tokens)
        stop = time.perf_counter() + seconds
        began = time.perf_counter()

        async def client(index: int) -> None:
            turn = index
            while time.perf_counter() < stop:
                if pattern == "mix":
                    tokens = LONG if turn % 2 else SHORT
                else:
                    tokens = LONG if pattern == "beside" and index else SHORT
                turn += 1
                first_ms, total_ms, count = await call(tokens)
                cell.first_ms.append(first_ms)
                cell.tokens += count
                if tokens == SHORT:
                    cell.short_ms.append(total_ms)

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        cell.seconds = time.perf_counter() - began
    return cell


def run(models: Path, seconds: float) -> tuple[list[str], list[str], dict[str, float]]:
    tokenizer = AutoTokenizer.from_pretrained(models / "gama" / "tokenizer")
    rows: list[str] = []
    besides: list[str] = []
    goals: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        for name, continuous in (("static", False), ("continuous", True)):
            model_dir = _serving_copy(models / "gama", Path(tmp) / name, continuous)
            port = free_port()
            servers[name] = ServerProcess(
                modelserver_args(model_dir, port), Path(tmp) / f"{name}.log", port
            )
            servers[name].start()
        try:
            for server in servers.values():
                server.wait_status()
            unloaded = {
                name: asyncio.run(load(s.address, tokenizer, 1, seconds / 2, "short"))
                for name, s in servers.items()
            }
            for c in CONCURRENCY:
                cells = {
                    name: asyncio.run(load(s.address, tokenizer, c, seconds, "mix"))
                    for name, s in servers.items()
                }
                if c > 1:
                    for name, s in servers.items():
                        beside = asyncio.run(load(s.address, tokenizer, c, seconds, "beside"))
                        alone = unloaded[name].p(unloaded[name].short_ms, 99)
                        short99 = beside.p(beside.short_ms, 99)
                        besides.append(
                            f"| {c} | {name} | {len(beside.short_ms)} | {short99:.0f} "
                            f"| {alone:.0f} | {short99 / alone:.2f} |"
                        )
                        print(besides[-1], flush=True)
                for name, cell in cells.items():
                    alone = unloaded[name].p(unloaded[name].short_ms, 99)
                    short99 = cell.p(cell.short_ms, 99)
                    rows.append(
                        f"| {c} | {name} | {cell.tokens / cell.seconds:.0f} "
                        f"| {cell.p(cell.first_ms, 50):.0f} / {cell.p(cell.first_ms, 99):.0f} "
                        f"| {short99:.0f} | {alone:.0f} | {short99 / alone:.2f} |"
                    )
                    print(rows[-1], flush=True)
                ratio = (cells["continuous"].tokens / cells["continuous"].seconds) / (
                    cells["static"].tokens / cells["static"].seconds
                )
                goals[f"tokens/s continuous / static at c={c}"] = ratio
                print(f"c={c}: continuous / static tokens/s = {ratio:.2f}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    return rows, besides, goals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rows, besides, goals = run(args.models, args.seconds)
    ratios = "; ".join(f"{k}: {v:.2f}x" for k, v in goals.items())
    body = "\n".join(
        [
            "## GAMA generation: continuous against static batching",
            "",
            f"`make bench` (`python -m benchmarks.generation`), {time.strftime('%Y-%m-%d')},",
            f"{machine()}, device cpu, float32. The tiny GAMA (`models/gama`, answers up to",
            f"{LONG} tokens) served twice side by side: `continuous_batching.enabled` true",
            f"(per-step scheduling, up to {MAX_BATCH} rows) and false (the dynamic batcher,",
            f"`max_batch_size` {MAX_BATCH}: a batch decodes until its longest answer ends).",
            f"Closed-loop clients over ModelStreamInfer, {args.seconds:g} s per cell, each",
            f"alternating short ({SHORT}) and long ({LONG}) max_new_tokens, the release's",
            "sampling (temperature 0.1, top-k 500, top-p 0.95, repetition penalty 1.1).",
            "tokens/s: answer tokens (re-tokenized) per second of wall time. First response:",
            "the client's time to its first streamed message (static batching streams",
            "nothing before the end). Short p99: latency of the 8-token answers under the mix;",
            "unloaded: the same server, one client, short answers only.",
            "",
            "| concurrency | batching | tokens/s | first response p50 / p99 ms | short p99 ms "
            "| short p99 unloaded ms | short p99 / unloaded |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"Ratios: {ratios}.",
            "",
            "Short answers beside long ones: one client asks for short answers while the",
            "others ask for long ones.",
            "",
            "| concurrency | batching | short answers | short p99 ms | short p99 unloaded ms "
            "| short p99 / unloaded |",
            "| ---: | --- | ---: | ---: | ---: | ---: |",
            *besides,
        ]
    )
    write_section(args.out, "generation", body)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
