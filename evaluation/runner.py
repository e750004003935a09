"""Sends every clip of a manifest to every model over OIP (paired), storing each answer as it
arrives. Concurrency 1 by default: parallel calls would queue behind each other inside one
model server and the latencies would measure the queue, not the model."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from evaluation.dataset import PROMPT
from evaluation.manifest import Clip, Manifest
from evaluation.store import MemoryUsage, ResultStore, SampleResult
from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.oip import audio_request, params_dict, parse_metadata, parse_response

TRANSCRIBE_PROMPT = "Transcribe the speech in this clip."
_FATAL = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


class CompareError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    model_name: str


@dataclass(frozen=True)
class ModelPlan:
    target: Target
    version: str
    task: str
    """The task sent: the asked one, or `describe` with a transcription prompt for a model that
    answers questions about audio but has no `transcribe`."""
    device: str


class _Model:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(
            target.address,
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    async def metadata(self, seconds: float) -> pb.ModelMetadataResponse:
        try:
            meta: pb.ModelMetadataResponse = await self.stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.target.model_name),
                timeout=seconds,
                wait_for_ready=True,
            )
            return meta
        except grpc.aio.AioRpcError as exc:
            raise CompareError(
                f"model {self.target.name} at {self.target.address}: {exc.code().name}: "
                f"{exc.details()}"
            ) from exc

    async def memory(self) -> MemoryUsage:
        meta = await self.metadata(10.0)
        params = params_dict(meta.parameters)

        def number(key: str) -> int | None:
            value = params.get(key)
            return int(value) if isinstance(value, int | float) else None

        return MemoryUsage(
            number("memory_rss_bytes") or 0,
            number("memory_peak_rss_bytes") or 0,
            number("gpu_memory_bytes"),
        )


async def plan(targets: list[Target], task: str, wait_s: float = 30.0) -> list[ModelPlan]:
    plans = []
    for target in targets:
        model = _Model(target)
        try:
            meta = await model.metadata(wait_s)
        finally:
            await model.channel.close()
        info = parse_metadata(meta)
        params = params_dict(meta.parameters)
        sent = task
        if task not in info.tasks:
            if task == "transcribe" and "describe" in info.tasks:
                sent = "describe"
            else:
                can = ", ".join(sorted(info.tasks)) or "nothing"
                raise CompareError(f"model {target.name} cannot {task} (it supports {can})")
        plans.append(ModelPlan(target, info.version, sent, str(params.get("device", ""))))
    return plans


def _request(
    clip: Clip, audio: bytes, model: ModelPlan, asked: str, model_name: str
) -> pb.ModelInferRequest:
    prompt = clip.prompt or PROMPT
    if model.task != asked:
        prompt = TRANSCRIBE_PROMPT
    return audio_request(model_name, clip.id, model.task, audio=audio, prompt=prompt)


async def _call(
    model: _Model, plan_: ModelPlan, clip: Clip, audio: bytes, asked: str, call_s: float
) -> SampleResult:
    request = _request(clip, audio, plan_, asked, plan_.target.model_name)
    start = time.perf_counter()
    try:
        response = await model.stub.ModelInfer(request, timeout=call_s)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in _FATAL:
            raise CompareError(
                f"model {plan_.target.name} at {plan_.target.address}: {exc.code().name}: "
                f"{exc.details()} (results so far are kept; run again to resume)"
            ) from exc
        return SampleResult(
            clip.id,
            plan_.target.name,
            exc.code().name,
            (time.perf_counter() - start) * 1000,
            error=exc.details() or "",
        )
    latency_ms = (time.perf_counter() - start) * 1000
    out = parse_response(response)
    return SampleResult(
        clip.id,
        plan_.target.name,
        "OK",
        latency_ms,
        out.queue_ms,
        out.compute_ms,
        out.text,
        tuple(out.labels),
        tuple(float(s) for s in out.scores),
        out.features,
    )


async def run(
    manifest: Manifest,
    plans: list[ModelPlan],
    task: str,
    store: ResultStore,
    concurrency: int = 1,
    call_s: float = 60.0,
    progress: Callable[[int], None] | None = None,
    memory_every: float = 1.0,
) -> int:
    """Runs what the store does not hold yet; returns how many samples this call added."""
    models = {p.target.name: _Model(p.target) for p in plans}
    done = store.done()
    queue: asyncio.Queue[tuple[int, Clip]] = asyncio.Queue()
    for index, clip in enumerate(manifest.clips):
        if any((clip.id, p.target.name) not in done for p in plans):
            queue.put_nowait((index, clip))
    added = 0

    async def worker() -> None:
        nonlocal added
        while not queue.empty():
            index, clip = queue.get_nowait()
            audio = await asyncio.to_thread(manifest.audio_path(clip).read_bytes)
            # Rotating the order per clip keeps warm caches and drift from favouring one model.
            shift = index % len(plans)
            for p in plans[shift:] + plans[:shift]:
                if (clip.id, p.target.name) in done:
                    continue
                result = await _call(models[p.target.name], p, clip, audio, task, call_s)
                store.add(result)
                added += 1
                if progress is not None:
                    progress(1)

    async def sample_memory() -> None:
        while True:
            for name, model in models.items():
                with contextlib.suppress(CompareError):
                    store.record_memory(name, await model.memory())
            await asyncio.sleep(memory_every)

    tasks = [asyncio.create_task(sample_memory())]
    try:
        workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
        tasks += workers
        await asyncio.gather(*workers)
        for name, model in models.items():
            store.record_memory(name, await model.memory())
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for model in models.values():
            await model.channel.close()
    return added
