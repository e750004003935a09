"""GRPCInferenceService: each method converts, calls the core, converts back."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gamaserving.grpcutil import grpc_errors
from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.oip import set_param
from gamaserving.telemetry.tracing import ChildSpan
from modelserver import __version__
from modelserver.core import InferenceCore
from modelserver.errors import InferenceError
from modelserver.memory import memory_parameters
from modelserver.oip.codec import encode_response, parse_request, task_name
from modelserver.oip.streaming import StreamInfer

log = logging.getLogger(__name__)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self.streams = StreamInfer(core, self._check_model)

    def _check_model(self, name: str, version: str) -> None:
        config = self.core.config
        if name != config.name:
            raise InferenceError(
                grpc.StatusCode.NOT_FOUND,
                f"model {name!r} is not served here; this server serves {config.name!r}",
            )
        if version and version != config.version:
            raise InferenceError(
                grpc.StatusCode.NOT_FOUND,
                f"model {name} version {version!r} is not served; version {config.version!r} is",
            )

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready)

    @grpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        self._check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.core.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="gama-serving-modelserver", version=__version__)

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        self._check_model(request.name, request.version)
        return model_metadata(self.core)

    @grpc_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        self._check_model(request.model_name, request.model_version)
        plain = parse_request(request, self.core.resolve_task(task_name(request)))
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        result = await self.core.infer(plain, deadline)
        with ChildSpan(self.core.tracer, "postprocess"):
            return encode_response(request, result, self.core.config.name, self.core.config.version)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async with contextlib.aclosing(self.streams.run(request_iterator, context)) as responses:
            async for response in responses:
                yield response


def model_metadata(core: InferenceCore) -> pb.ModelMetadataResponse:
    config = core.config
    family = core.family
    if family is None:
        raise InferenceError(grpc.StatusCode.UNAVAILABLE, f"model {config.name} is still loading")
    meta = pb.ModelMetadataResponse(
        name=config.name,
        versions=[config.version],
        platform="onnxruntime_onnx" if config.runtime == "onnx" else "pytorch_transformers",
    )
    meta.inputs.add(name="AUDIO", datatype="BYTES", shape=[1])
    wave = meta.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, -1])
    set_param(wave.parameters, "sample_rate", config.sample_rate)
    if any(t.value == "describe" for t in family.tasks):
        meta.inputs.add(name="PROMPT", datatype="BYTES", shape=[1])
    for spec in family.output_specs():
        meta.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
    p = family.placement
    values: dict[str, str | int] = {
        "family": config.family,
        "tasks": ",".join(t.value for t in family.tasks),
        "runtime": p.runtime,
        "device": p.device,
        "provider": p.provider,
        "dtype": p.dtype,
        "embedding_size": family.embedding_size,
        "label_count": len(config.labels),
        "sample_rate": config.sample_rate,
        "max_batch_size": config.batching.max_batch_size,
        # The router refuses what the server would, before sending it (gamaserving/oip.py).
        "max_audio_seconds": str(config.limits.max_audio_seconds),
        "max_audio_bytes": config.limits.max_audio_bytes,
        "max_prompt_chars": config.limits.max_prompt_chars,
    }
    if config.labels:
        values["labels"] = ",".join(config.labels)
    if core.scheduler is not None:  # the KV budget in force: configured, or planned
        values["kv_budget_tokens"] = core.scheduler.kv_budget
    values.update(memory_parameters(p.device))
    for key, value in values.items():
        set_param(meta.parameters, key, value)
    return meta
