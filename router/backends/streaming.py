"""A generated answer from a model server over Triton's `ModelStreamInfer`.

One request per stream. Each decoupled response is a text piece; the empty response flagged
`triton_final_response` ends the answer with its finish reason and token counts. The attempt's
own timeout bounds the wait for the first response (what a caller feels as responsiveness);
after that the answer may take the rest of the caller's deadline. The result is one
`ModelInferResponse` with the whole text, so validation and every recorder see a generated
answer the way they see any other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.oip import param_value, parse_response

MODEL_STREAM_INFER = "inference.GRPCInferenceService/ModelStreamInfer"
FINAL = "triton_final_response"

OnPiece = Callable[[str], Awaitable[None]]


class CallFailed(Exception):
    """A failed call with its status, shaped like grpc.aio.AioRpcError where the dispatcher
    reads one."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@dataclass
class Progress:
    """How far one streamed attempt got: what the dispatcher needs to decide on failover."""

    pieces_sent: int = 0
    """Pieces passed on to the caller: after the first, there is no failing over."""
    first_response_s: float | None = None


async def _one(request: pb.ModelInferRequest) -> AsyncIterator[pb.ModelInferRequest]:
    yield request


def _status(reply: pb.ModelStreamInferResponse) -> grpc.StatusCode:
    code = reply.infer_response.parameters.get("error_code")
    name = str(param_value(code)) if code is not None else ""
    return grpc.StatusCode[name] if name in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN


def _text(response: pb.ModelInferResponse) -> str:
    return parse_response(response).text or ""


def _whole(final: pb.ModelInferResponse, text: str) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse()
    response.CopyFrom(final)
    del response.outputs[:]
    del response.raw_output_contents[:]
    out = response.outputs.add(name="TEXT", datatype="BYTES", shape=[1])
    out.contents.bytes_contents.append(text.encode())
    return response


async def stream_infer(
    stub: pb_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    *,
    first_timeout: float,
    answer_seconds: float,
    metadata: tuple[tuple[str, str], ...] | list[tuple[str, str]] | None,
    progress: Progress,
    on_piece: OnPiece | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> pb.ModelInferResponse:
    call = stub.ModelStreamInfer(_one(request), timeout=answer_seconds, metadata=metadata)
    started = clock()
    texts: list[str] = []
    finished = False
    try:
        while True:
            if progress.first_response_s is None:
                try:
                    reply = await asyncio.wait_for(call.read(), first_timeout)
                except TimeoutError:
                    raise CallFailed(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no first response within {first_timeout * 1000:.0f} ms",
                    ) from None
                progress.first_response_s = clock() - started
            else:
                reply = await call.read()
            if reply is grpc.aio.EOF:
                raise CallFailed(
                    grpc.StatusCode.UNAVAILABLE, "the stream ended before its final response"
                )
            if reply.error_message:
                raise CallFailed(_status(reply), reply.error_message)
            response = reply.infer_response
            flag = response.parameters.get(FINAL)
            if flag is not None and param_value(flag) is True:
                # The server ends the stream after the final response of its only request:
                # reading to its end lets the request finish as served, not cancelled.
                await call.read()
                finished = True
                # A server that batches statically sends the whole answer in the final one.
                return _whole(response, "".join(texts) + _text(response))
            piece = _text(response)
            texts.append(piece)
            if on_piece is not None and piece:
                progress.pieces_sent += 1
                await on_piece(piece)
    finally:
        if not finished:
            call.cancel()
