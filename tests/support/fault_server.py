"""A fault-injecting OIP v2 model server: a test double for a collaborator of the router.

It declares itself like a real model server (ModelMetadata with tasks, embedding size and
labels; grpc.health.v1 readiness) and answers ModelInfer with good outputs, or with the fault
its `mode` names. It counts what it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.oip import join_bytes, param_value, set_param

LABELS = ["speech", "tone", "chirp", "noise", "click"]
MODES = (
    "ok",
    "nan",
    "wrong_dim",
    "zeros",
    "bad_scores",
    "unknown_label",
    "empty_text",
    "slow",
    "unavailable",
    "internal",
    "invalid",
    "break",
)
"""`break`: a streamed answer sends its first piece, then the stream fails UNAVAILABLE."""


class FaultyModel(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        name: str,
        dim: int = 64,
        mode: str = "ok",
        delay: float = 0.0,
        streams: bool = True,
        declares: str = "transcribe,tag,embed,describe",
    ) -> None:
        self.name = name
        self.declares = declares
        """The tasks its ModelMetadata declares."""
        self.streams = streams
        """False: ModelStreamInfer is UNIMPLEMENTED, as on a plain OIP server."""
        self.dim = dim
        self.mode = mode
        self.delay = delay
        self.received = 0
        self.tasks: list[str] = []
        self.arrived = asyncio.Event()
        """Set by each ModelInfer as it arrives; clear it, then wait for the next one."""

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: object
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: object
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: object
    ) -> pb.ModelMetadataResponse:
        meta = pb.ModelMetadataResponse(name=self.name, versions=["fault-1"], platform="test")
        set_param(meta.parameters, "tasks", self.declares)
        set_param(meta.parameters, "embedding_size", 64)
        set_param(meta.parameters, "labels", ",".join(LABELS))
        return meta

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        self.received += 1
        self.arrived.set()
        task = str(param_value(request.parameters["task"]))
        self.tasks.append(task)
        mode = self.mode
        if mode == "slow" or self.delay:
            await asyncio.sleep(self.delay or 5.0)
        if mode == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: unavailable")
        if mode == "internal":
            await context.abort(grpc.StatusCode.INTERNAL, "injected: internal")
        if mode == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "injected: your audio is bad")
        response = pb.ModelInferResponse(
            model_name=self.name, model_version="fault-1", id=request.id
        )
        rng = np.random.default_rng(self.received)

        def add(name: str, datatype: str, shape: list[int], raw: bytes) -> None:
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)

        if task == "embed":
            dim = self.dim + 3 if mode == "wrong_dim" else self.dim
            v = rng.standard_normal(dim).astype("<f4")
            if mode == "nan":
                v[3] = np.nan
            if mode == "zeros":
                v[:] = 0
            add("EMBEDDING", "FP32", [1, dim], v.tobytes())
        elif task == "tag":
            scores = np.array([0.9, 0.5, 0.2], dtype="<f4")
            if mode == "bad_scores":
                scores = np.array([1.7, 0.5, -0.2], dtype="<f4")
            labels = [b"speech", b"tone", b"barking" if mode == "unknown_label" else b"noise"]
            add("LABELS", "BYTES", [3], join_bytes(labels))
            add("SCORES", "FP32", [3], scores.tobytes())
        else:
            text = b"" if mode == "empty_text" else f"{self.name} says hello".encode()
            add("TEXT", "BYTES", [1], join_bytes([text]))
        set_param(response.parameters, "queue_ms", 0.1)
        set_param(response.parameters, "compute_ms", 0.2)
        set_param(response.parameters, "batch_size", 1)
        return response

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """As the model server streams: errors as `error_message` with `error_code`, the
        answer word by word, then an empty final response."""
        if not self.streams:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        async for request in request_iterator:
            self.received += 1
            self.arrived.set()
            self.tasks.append(str(param_value(request.parameters["task"])))
            if self.mode == "slow" or self.delay:
                await asyncio.sleep(self.delay or 5.0)
            codes = {"unavailable": "UNAVAILABLE", "internal": "INTERNAL"}
            codes["invalid"] = "INVALID_ARGUMENT"
            if self.mode in codes:
                failed = pb.ModelInferResponse(model_name=self.name, id=request.id)
                set_param(failed.parameters, "error_code", codes[self.mode])
                yield pb.ModelStreamInferResponse(
                    error_message=f"injected: {self.mode}", infer_response=failed
                )
                continue
            text = "" if self.mode == "empty_text" else f"{self.name} says hello"
            words = text.split(" ") if text else []
            for i, word in enumerate(words):
                piece = pb.ModelInferResponse(
                    model_name=self.name, model_version="fault-1", id=request.id
                )
                piece.outputs.add(name="TEXT", datatype="BYTES", shape=[1])
                piece.raw_output_contents.append(
                    join_bytes([(word if i == 0 else " " + word).encode()])
                )
                set_param(piece.parameters, "triton_final_response", False)
                yield pb.ModelStreamInferResponse(infer_response=piece)
                if self.mode == "break":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: broke mid-answer")
            final = pb.ModelInferResponse(
                model_name=self.name, model_version="fault-1", id=request.id
            )
            set_param(final.parameters, "triton_final_response", True)
            set_param(final.parameters, "finish_reason", "stop")
            set_param(final.parameters, "input_tokens", 100)
            set_param(final.parameters, "output_tokens", len(words))
            yield pb.ModelStreamInferResponse(infer_response=final)


@contextlib.asynccontextmanager
async def fault_server(
    name: str, port: int = 0, **kwargs: object
) -> AsyncIterator[tuple[FaultyModel, str]]:
    model = FaultyModel(name, **kwargs)  # type: ignore[arg-type]
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(model, server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    for service in ("", "readiness"):
        await checker.set(service, health_pb2.HealthCheckResponse.SERVING)
    try:
        yield model, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
