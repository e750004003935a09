"""Triton's `ModelStreamInfer` over the serving core.

Requests on one stream run concurrently, as Triton runs them; their responses interleave,
each carrying its request's id. A generated answer is decoupled: a response per text piece as
it is decoded, then an empty final response flagged `triton_final_response` with the finish
reason and token counts. A request that fails gets `error_message` (as Triton sends it) and the
stream carries on with the others. When the caller cancels or its deadline passes, every
sequence of the stream leaves the decode batch at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc

from gamaserving.grpcutil import StatusError
from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.oip import set_param
from modelserver.core import InferenceCore
from modelserver.generation.result import generated_result
from modelserver.generation.scheduler import Finished, Piece
from modelserver.messages import InferResult
from modelserver.oip.codec import (
    final_response,
    parse_request,
    piece_response,
    task_name,
)

log = logging.getLogger(__name__)

Response = pb.ModelStreamInferResponse


def error_response(request: pb.ModelInferRequest, code: grpc.StatusCode, message: str) -> Response:
    """Triton's form (error_message), plus the status name, for clients that route on it."""
    failed = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    set_param(failed.parameters, "error_code", code.name)
    return Response(error_message=message, infer_response=failed)


class StreamInfer:
    def __init__(self, core: InferenceCore, check_model: Callable[[str, str], None]) -> None:
        self.core = core
        self.check_model = check_model

    async def run(
        self,
        requests: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncGenerator[Response, None]:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        out: asyncio.Queue[Response | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                async for response in self._responses(request, deadline):
                    out.put_nowait(Response(infer_response=response))
            except StatusError as exc:
                out.put_nowait(error_response(request, exc.status, exc.message))
            except Exception:
                log.exception("unexpected error in a streamed request")
                out.put_nowait(
                    error_response(
                        request, grpc.StatusCode.INTERNAL, "internal error; see the server log"
                    )
                )

        async def read() -> None:
            async for request in requests:
                task = asyncio.get_running_loop().create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*running)
            out.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (response := await out.get()) is not None:
                yield response
            await reader
        finally:
            # The caller went away (or the stream failed): their sequences leave at once.
            for task in (reader, *running):
                task.cancel()
            for task in (reader, *running):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _responses(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> AsyncGenerator[pb.ModelInferResponse, None]:
        core = self.core
        name, version = core.config.name, core.config.version
        self.check_model(request.model_name, request.model_version)
        plain = parse_request(request, core.resolve_task(task_name(request)))
        async with contextlib.aclosing(core.stream(plain, deadline)) as events:
            async for event in events:
                if isinstance(event, InferResult):
                    yield final_response(request, event, name, version)
                elif isinstance(event, Piece):
                    yield piece_response(request, event.text, name, version)
                elif isinstance(event, Finished):
                    yield final_response(request, generated_result(None, "", event), name, version)
