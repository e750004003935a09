"""The serving core: validate a request, decode and prepare it, batch it, shape the result.

Transport-free: the gRPC servicer converts protobuf to `InferRequest` and calls `infer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Tracer

from gamaserving.telemetry.tracing import ChildSpan, span_between
from modelserver.audio import AudioDecoder
from modelserver.batching import BatchInfo, DynamicBatcher
from modelserver.config import ModelConfig, Task
from modelserver.errors import InferenceError, invalid, unavailable
from modelserver.families.base import Family
from modelserver.generation.result import generated_result
from modelserver.generation.scheduler import Event, Finished, GenerationScheduler, Piece
from modelserver.generation.tracing import GenerationSpan
from modelserver.lifecycle import Lifecycle, ModelState
from modelserver.messages import TASK_OUTPUTS, AudioPayload, InferRequest, InferResult
from modelserver.plan import MemoryPlan, plan
from modelserver.worker import WorkLoop

log = logging.getLogger(__name__)


class CoreMetrics(Protocol):
    def request(self, task: str, outcome: str, queue_s: float | None) -> None: ...

    def batch(self, size: int, seconds: float) -> None: ...

    def generated(self, finished: Finished) -> None: ...


class Unmeasured:
    """No metrics (no metrics port, and warm-up requests, which are not traffic)."""

    def request(self, task: str, outcome: str, queue_s: float | None) -> None:
        pass

    def batch(self, size: int, seconds: float) -> None:
        pass

    def generated(self, finished: Finished) -> None:
        pass


UNMEASURED = Unmeasured()


class InferenceCore:
    """The request pipeline: admission, decoding and preparation, then the dynamic batcher or,
    for a generated answer, the generation scheduler. The model's states live in `lifecycle`."""

    def __init__(
        self,
        config: ModelConfig,
        lifecycle: Lifecycle,
        metrics: CoreMetrics = UNMEASURED,
        tracer: Tracer | None = None,
        prep_threads: int = 2,
    ) -> None:
        self.config = config
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.tracer: Tracer = tracer or trace.NoOpTracer()
        self.family: Family | None = None
        self.batcher: DynamicBatcher[Any, dict[str, np.ndarray]] | None = None
        self.scheduler: GenerationScheduler | None = None
        self.plan: MemoryPlan | None = None
        """The memory plan the model was loaded by (modelserver/plan.py)."""
        self.decoder = AudioDecoder(config.sample_rate, config.limits)
        self.arriving = 0
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._prep = ThreadPoolExecutor(prep_threads, thread_name_prefix="prepare")
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="inference")

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(
        self,
        model_dir: Any,
        device: str,
        device_memory: int | None = None,
        emulated_bf16: bool = False,
    ) -> None:
        """Plan memory, load on the inference thread (the event loop keeps answering probes
        meanwhile), then start the work loops. PlanError, before anything is loaded, when the
        model cannot fit."""
        from modelserver.families import load_family

        loop = asyncio.get_running_loop()
        # Planned before anything is loaded: a model that cannot fit is refused in seconds.
        self.plan = await loop.run_in_executor(
            self._compute, self._plan, Path(model_dir), device, device_memory, emulated_bf16
        )
        log.info(
            "memory plan for %s: %s",
            self.config.name,
            "; ".join(" ".join(line.split()) for line in self.plan.lines()),
            extra={"event": "memory_plan"},
        )
        config = self.config.model_copy(update={"dtype": self.plan.dtype})
        family = await loop.run_in_executor(self._compute, load_family, model_dir, config, device)
        generating = self.config.continuous_batching.model_copy(
            update={"kv_budget_tokens": self.plan.kv_budget_tokens or 1}
        )
        engine = family.engine() if generating.enabled else None
        if engine is not None:
            self.scheduler = GenerationScheduler(
                engine, generating, self._compute, observer=self.lifecycle
            )
            self.scheduler.start()
        self.batcher = DynamicBatcher(
            family.run_batch,
            self.config.batching,
            self._compute,
            observer=self.lifecycle,
            arriving=lambda: self.arriving,
            on_batch=self._batch_done,
        )
        self.batcher.start()
        self.family = family

    def _plan(
        self, model_dir: Path, device: str, device_memory: int | None, emulated_bf16: bool
    ) -> MemoryPlan:
        from modelserver.runtime.torch_runtime import cuda_works

        on = "cuda" if cuda_works(device) else "cpu"
        return plan(model_dir, self.config, on, device_memory, emulated_bf16=emulated_bf16)

    async def warm_up(self, iterations: int | None = None) -> None:
        """Every task through the full path, so first client calls meet warm caches."""
        family = self._family()
        w = self.config.warmup
        rounds = w.iterations if iterations is None else iterations
        limits = self.config.limits
        # The warm-up clip obeys the same limits as clients' clips.
        seconds = min(
            w.seconds,
            limits.max_audio_seconds,
            limits.max_audio_bytes / 4 / self.config.sample_rate,
        )
        samples = max(int(seconds * self.config.sample_rate), 1)
        t = np.arange(samples, dtype=np.float32) / self.config.sample_rate
        wave = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        payload = AudioPayload(waveform=wave, sample_rate=self.config.sample_rate)
        for i in range(rounds):
            for task in family.tasks:
                prompt = "What do you hear?" if task is Task.DESCRIBE else None
                request = InferRequest(
                    f"warmup-{i}-{task.value}",
                    task,
                    payload,
                    frozenset(TASK_OUTPUTS[task]),
                    prompt,
                    max_new_tokens=w.max_new_tokens,
                )
                await self.infer(request, deadline=None, warming=True)

    async def self_test(self) -> bool:
        """One pass over every task; a success clears FAULTED (the lifecycle hears each call)."""
        try:
            await self.warm_up(iterations=1)
        except Exception as exc:
            log.warning("model %s: self-test failed: %s", self.config.name, exc)
            return False
        return True

    def drain(self) -> None:
        self.lifecycle.set_state(ModelState.DRAINING)
        for worker in self._workers():
            worker.close()

    async def close(self) -> None:
        for worker in self._workers():
            await worker.stop()
        self._prep.shutdown(wait=False, cancel_futures=True)
        self._compute.shutdown(wait=False, cancel_futures=True)

    def stuck(self, stuck_after: float, now: float | None = None) -> bool:
        """True when one model call has run longer than `stuck_after` seconds."""
        now = now or time.monotonic()
        return any(
            w.busy_since is not None and now - w.busy_since > stuck_after for w in self._workers()
        )

    def _workers(self) -> list[WorkLoop]:
        return [w for w in (self.batcher, self.scheduler) if w is not None]

    def _batch_done(self, size: int, seconds: float) -> None:
        # Warm-up batches are not traffic.
        if self.lifecycle.state is not ModelState.LOADING:
            self.metrics.batch(size, seconds)

    def _family(self) -> Family:
        if self.family is None:
            raise unavailable(f"model {self.config.name} is still loading; retry shortly")
        return self.family

    # -- requests ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.lifecycle.ready

    def resolve_task(self, name: str | None) -> Task:
        family = self._family()
        if name is None or name == "":
            return family.tasks[0]
        try:
            task = Task(name.lower())
        except ValueError:
            raise invalid(
                f"unknown task {name!r}; use one of {', '.join(t.value for t in Task)}"
            ) from None
        if task not in family.tasks:
            raise invalid(
                f"model {self.config.name} cannot {task.value}; it supports "
                f"{', '.join(t.value for t in family.tasks)}"
            )
        return task

    async def infer(
        self, request: InferRequest, deadline: float | None, warming: bool = False
    ) -> InferResult:
        """The whole answer; a generated one is its streamed pieces joined. `deadline` is on
        time.monotonic()."""
        texts: list[str] = []
        async with contextlib.aclosing(self.stream(request, deadline, warming)) as events:
            async for event in events:
                if isinstance(event, InferResult):
                    return event
                if isinstance(event, Piece):
                    texts.append(event.text)
                else:
                    return generated_result(request, "".join(texts), event)
        raise AssertionError("a stream ends with a result or a Finished")

    async def stream(
        self, request: InferRequest, deadline: float | None, warming: bool = False
    ) -> AsyncGenerator[InferResult | Event, None]:
        """One InferResult for a one-shot task; for a generated answer, its pieces as they are
        decoded, then `Finished`. Closing it early frees the sequence's slot at the next step."""
        self.in_flight += 1
        self._idle.clear()
        metrics = UNMEASURED if warming else self.metrics
        outcome, queue_s = "ok", None
        answered = False  # the last event is out: closing the stream after it is no cancel
        try:
            family = self._admissible(request, warming)
            with ChildSpan(self.tracer, "prepare", attributes={"task": request.task.value}):
                item = await self._prepare_item(family, request)
            generation = family.generation(item) if self.scheduler is not None else None
            if generation is None:
                result = await self._batch(request, item, deadline)
                queue_s = result.queue_ms / 1000
                answered = True
                yield result
                return
            assert self.scheduler is not None
            with GenerationSpan(self.tracer, self.config.name, generation) as span:
                async for event in self.scheduler.generate(generation, deadline):
                    span.saw(event)
                    if isinstance(event, Finished):
                        queue_s = event.queue_ms / 1000
                        answered = True
                        metrics.generated(event)
                    yield event
        except InferenceError as exc:
            outcome = exc.status.name.lower()
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "ok" if answered else "cancelled"
            raise
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
            metrics.request(request.task.value, outcome, queue_s)

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()

    def _admissible(self, request: InferRequest, warming: bool) -> Family:
        family = self._family()
        state = self.lifecycle.state
        if state is ModelState.DRAINING:
            raise unavailable("the model server is draining and takes no new requests")
        if state is ModelState.LOADING and not warming:
            raise unavailable(f"model {self.config.name} is warming up; retry shortly")
        family.check_outputs(request)
        if request.prompt is not None and len(request.prompt) > self.config.limits.max_prompt_chars:
            raise invalid(
                f"PROMPT has {len(request.prompt)} characters; the limit is "
                f"{self.config.limits.max_prompt_chars}"
            )
        return family

    async def _batch(self, request: InferRequest, item: Any, deadline: float | None) -> InferResult:
        assert self.batcher is not None
        # Batch spans and links only for a recorded request: warm-up and sampled-out requests
        # make none.
        current = trace.get_current_span()
        own = current.get_span_context() if current.is_recording() else None
        enqueued = time.monotonic()
        outputs, info = await self.batcher.submit(item, deadline, tag=own)
        if own is not None:
            self._trace_batch(enqueued, info, own)
        return InferResult(
            outputs={name: value for name, value in outputs.items() if name in request.outputs},
            queue_ms=info.queue_ms,
            compute_ms=info.compute_ms,
            batch_size=info.batch_size,
        )

    async def _prepare_item(self, family: Family, request: InferRequest) -> Any:
        if self._prepare_inline(family, request):
            return self._prepare(family, request)
        self.arriving += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._prep, self._prepare, family, request)
        finally:
            self.arriving -= 1

    def _trace_batch(self, enqueued: float, info: BatchInfo, own: trace.SpanContext) -> None:
        """Queue wait and the batch call as spans of this request, linked to its batch mates."""
        end = info.started + info.compute_ms / 1000
        span_between(
            self.tracer, "queue", enqueued, info.started, attributes={"queue_ms": info.queue_ms}
        )
        links = [
            trace.Link(t)
            for t in info.tags
            if isinstance(t, trace.SpanContext) and t.is_valid and t != own
        ]
        attributes = {"batch_size": info.batch_size, "model": self.config.name}
        span_between(
            self.tracer, "batch_inference", info.started, end, attributes=attributes, links=links
        )

    @staticmethod
    def _prepare_inline(family: Family, request: InferRequest) -> bool:
        """A thread hop costs more than decoding a short clip: small inputs of a family with
        cheap pre-processing are prepared on the event loop (measured in docs/benchmarks.md)."""
        audio = request.audio
        size = len(audio.encoded) if audio.encoded is not None else 0
        if audio.waveform is not None:
            size = audio.waveform.nbytes
        return family.inline_prepare_bytes >= size

    def _prepare(self, family: Family, request: InferRequest) -> Any:
        return family.prepare(request, self.decoder.decode(request.audio))
