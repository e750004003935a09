"""One span per generation, from arrival to its last token, with its token counts under
OpenTelemetry's GenAI attribute names."""

from __future__ import annotations

import asyncio
from types import TracebackType

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer

from modelserver.generation.scheduler import Event, Finished, GenerationRequest, Piece


class GenerationSpan:
    def __init__(self, tracer: Tracer, model: str, request: GenerationRequest) -> None:
        current = trace.get_current_span()
        # Only a recorded request gets one: warm-up and sampled-out requests make none.
        self.span = (
            tracer.start_span(
                "generation",
                attributes={
                    "gen_ai.operation.name": "text_completion",
                    "gen_ai.request.model": model,
                    "gen_ai.request.max_tokens": request.max_new_tokens,
                    "gen_ai.usage.input_tokens": request.input_tokens,
                },
            )
            if current.is_recording()
            else None
        )
        self.output_tokens = 0
        self.first = False
        self.finished = False

    def saw(self, event: Event) -> None:
        if self.span is None:
            return
        if not self.first:
            self.first = True
            self.span.add_event("first_token")
        if isinstance(event, Piece):
            self.output_tokens = event.output_tokens
        elif isinstance(event, Finished):
            self.finished = True
            self.output_tokens = event.output_tokens
            self.span.set_attributes(
                {
                    "gen_ai.response.finish_reasons": [event.reason],
                    "gen_ai.server.time_to_first_token": event.first_token_ms / 1000,
                    "batch_size": event.batch_size,
                }
            )

    def __enter__(self) -> GenerationSpan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.span is None:
            return
        self.span.set_attribute("gen_ai.usage.output_tokens", self.output_tokens)
        if exc is not None and not (self.finished and isinstance(exc, GeneratorExit)):
            cancelled = isinstance(exc, GeneratorExit | asyncio.CancelledError)
            self.span.set_attribute("generation.outcome", "cancelled" if cancelled else "failed")
            if not cancelled:
                self.span.set_status(Status(StatusCode.ERROR, str(exc)))
        self.span.end()
