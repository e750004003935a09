"""GAMA served (the tiny model in the released layout): describe tokens per second at batch 1
and 8, and embed, over gRPC, one run, one machine.

    python -m benchmarks.gama --models models --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc
from transformers import AutoTokenizer

from benchmarks.common import Load, closed_loop, machine, write_section
from benchmarks.modelserver import _model_copy, served
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.oip import param_value
from modelserver.config import Task
from tests.support.audio import wav
from tests.support.oip import infer_request, outputs
from tests.support.processes import ServerProcess, free_port, modelserver_args

MAX_NEW_TOKENS = 32
PROMPT = "Describe the audio in detail."


async def describe(
    address: str, tokenizer: object, concurrency: int, seconds: float
) -> tuple[Load, int]:
    """Greedy answers of exactly what the model generates (up to MAX_NEW_TOKENS each)."""
    clip = wav(2.0)
    tokens = [0]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        counter = iter(range(10**9))

        async def call() -> int:
            request = infer_request(
                "gama",
                audio=clip,
                task="describe",
                prompt=PROMPT,
                temperature=0.0,
                max_new_tokens=MAX_NEW_TOKENS,
                request_id=f"bench-{next(counter)}",
            )
            response = await stub.ModelInfer(request)
            text = outputs(response)["TEXT"][0].decode()
            tokens[0] += len(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
            return int(param_value(response.parameters["batch_size"]) or 1)

        load = await closed_loop(call, concurrency, seconds, warmup=2)
        return load, tokens[0]


def run(models: Path, seconds: float) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(models / "gama" / "tokenizer")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model_copy(models / "gama", Path(tmp) / "gama", batching=True)
        port = free_port()
        server = ServerProcess(modelserver_args(model_dir, port), Path(tmp) / "gama.log", port)
        server.start()
        try:
            server.wait_status()
            for c in (1, 8):
                load, tokens = asyncio.run(describe(server.address, tokenizer, c, seconds))
                rows.append(
                    f"| describe | {c} | {load.mean_batch:.1f} | {tokens / load.seconds:.0f} "
                    f"| {load.throughput:.2f} | {load.p50_ms:.0f} / {load.p99_ms:.0f} |"
                )
                print(rows[-1], flush=True)
            for c in (1, 8):
                load = asyncio.run(served(server.address, "gama", Task.EMBED, wav(2.0), c, seconds))
                rows.append(
                    f"| embed | {c} | {load.mean_batch:.1f} | - | {load.throughput:.1f} "
                    f"| {load.p50_ms:.1f} / {load.p99_ms:.1f} |"
                )
                print(rows[-1], flush=True)
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    rows = run(args.models, args.seconds)
    body = "\n".join(
        [
            "## GAMA (tiny, released layout): describe and embed",
            "",
            f"`make bench` (`python -m benchmarks.gama`), {time.strftime('%Y-%m-%d')},",
            f"{machine()}, device cpu, float32. `models/gama` (converted from the tiny release:",
            "CAV-MAE 128 wide with 11 + 1 blocks over 512 patches, a 4-layer Q-Former, a 2-layer",
            "128-wide LLaMA) served by `modelserver serve` with `max_batch_size` 16; closed loop",
            f"over gRPC, {args.seconds:g} s per cell. describe: a 2 s clip, greedy, at most",
            f"{MAX_NEW_TOKENS} new tokens (tokens counted by re-tokenizing each answer), under",
            "continuous batching (the default; mean batch: the most rows of a decode step each",
            "answer took part in); embed in the dynamic batcher. The section 'GAMA generation'",
            "compares continuous with static batching.",
            "",
            "| task | concurrency | mean batch | tokens/s | req/s | p50 / p99 ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )
    write_section(args.out, "gama", body)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
