"""A generated answer as the unary API returns it."""

from __future__ import annotations

import numpy as np

from modelserver.generation.scheduler import Finished
from modelserver.messages import TEXT, InferRequest, InferResult


def usage(finished: Finished) -> dict[str, str | int | float]:
    """Response parameters of a finished generation (docs/protocol.md)."""
    return {
        "finish_reason": finished.reason,
        "input_tokens": finished.input_tokens,
        "output_tokens": finished.output_tokens,
        "time_to_first_token_ms": round(finished.first_token_ms, 3),
    }


def generated_result(request: InferRequest | None, text: str, finished: Finished) -> InferResult:
    """The unary result; with no request, the final response of a stream (the text went out
    in pieces; other outputs asked for, such as EMBEDDING, come with it)."""
    outputs = dict(finished.outputs)
    if request is not None:
        outputs = {k: v for k, v in outputs.items() if k in request.outputs}
        if TEXT in request.outputs:
            outputs[TEXT] = np.array([text.encode()], dtype=object)
    return InferResult(
        outputs=outputs,
        queue_ms=finished.queue_ms,
        compute_ms=finished.first_token_ms - finished.queue_ms + finished.decode_ms,
        batch_size=finished.batch_size,
        extra=usage(finished),
    )
