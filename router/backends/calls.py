"""One model call of an attempt, with the attempt span's trace context: unary ModelInfer, or
Triton's ModelStreamInfer for a generated answer (falling back to unary on a server without
it)."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
from opentelemetry import trace

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.telemetry.tracing import inject
from router.backends.endpoint import Endpoint
from router.backends.model import ModelBackend
from router.backends.oip import MODEL_INFER, infer_request
from router.backends.streaming import MODEL_STREAM_INFER, OnPiece, Progress, stream_infer
from router.requests import RouteRequest


def method(req: RouteRequest) -> str:
    """Generated answers stream (Triton's ModelStreamInfer); the rest are unary."""
    return MODEL_STREAM_INFER if req.task == "describe" else MODEL_INFER


def attempt_attributes(
    backend: ModelBackend, endpoint: Endpoint, req: RouteRequest, timeout: float
) -> dict[str, str | float]:
    return {
        "model": backend.key,
        "server.address": endpoint.target,
        "rpc.method": method(req),
        "attempt.timeout_ms": round(timeout * 1000, 1),
    }


def call(
    backend: ModelBackend,
    endpoint: Endpoint,
    req: RouteRequest,
    seconds: float,
    span: trace.Span,
    progress: Progress | None = None,
    on_piece: OnPiece | None = None,
    answer_seconds: float | None = None,
) -> Awaitable[pb.ModelInferResponse]:
    """One call carrying the attempt span's trace context to the model server: ModelInfer
    with a deadline `seconds` away, or for a generated answer a stream whose first response
    is due within `seconds` and whose end within `answer_seconds`. The unary call is returned
    as it is, not wrapped in a coroutine of its own (a layer on every request)."""
    request = infer_request(backend.server_name, req)
    if method(req) == MODEL_STREAM_INFER:
        return _streamed(endpoint, request, seconds, span, progress, on_piece, answer_seconds)
    return endpoint.stub.ModelInfer(  # type: ignore[no-any-return]
        request, timeout=seconds, metadata=inject(span)
    )


async def _streamed(
    endpoint: Endpoint,
    request: pb.ModelInferRequest,
    seconds: float,
    span: trace.Span,
    progress: Progress | None,
    on_piece: OnPiece | None,
    answer_seconds: float | None,
) -> pb.ModelInferResponse:
    progress = progress or Progress()
    try:
        return await stream_infer(
            endpoint.stub,
            request,
            first_timeout=seconds,
            answer_seconds=max(seconds, answer_seconds or seconds),
            metadata=inject(span),
            progress=progress,
            on_piece=on_piece,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED or progress.first_response_s:
            raise
    # An OIP server without Triton's streaming RPC: the whole answer, unary.
    span.set_attribute("rpc.method", MODEL_INFER)
    return await endpoint.stub.ModelInfer(  # type: ignore[no-any-return]
        request, timeout=seconds, metadata=inject(span)
    )
