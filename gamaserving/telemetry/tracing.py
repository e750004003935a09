"""Traces: one per request from client to router to model server, W3C trace context carried
in gRPC metadata. Each server owns its TracerProvider; without OTEL_* exporter settings the
tracer is a no-op and costs next to nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
HEADERS = frozenset(PROPAGATOR.fields)


def tracing_wanted() -> bool:
    if os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class Tracing:
    def __init__(self, service: str) -> None:
        self.provider: TracerProvider | None = None
        if tracing_wanted():
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            resource = Resource.create(
                {"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}
            )
            self.provider = TracerProvider(resource=resource)
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            self.tracer: Tracer = self.provider.get_tracer("gamaserving")
        else:
            self.tracer = trace.NoOpTracer()

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def extract(metadata: Iterable[tuple[str, Any]] | None) -> Context | None:
    """The caller's W3C trace context, or None when it sent none (the propagator's parsing
    is skipped for the many calls that carry no trace)."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key in HEADERS:
            carrier[key] = value if isinstance(value, str) else value.decode()
    return PROPAGATOR.extract(carrier) if carrier else None


def inject(span: trace.Span) -> list[tuple[str, str]]:
    """Metadata carrying `span`'s trace context to the next hop. An unsampled span still
    travels, flagged unsampled, so the next hop drops its part of the trace too."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return list(carrier.items())


def child_span(tracer: Tracer, name: str, **kw: Any) -> trace.Span:
    """A span under the current one; when the current one is not recorded (sampled out, or
    tracing off), that span itself, unrecorded, without asking the SDK. Sampled-out spans
    still cost the SDK about 6 us each, and under a parent-based sampler the children of an
    unsampled span are never recorded (a trace-id ratio sampler decides them alike).
    Callers end what this returns; ending an unrecorded span does nothing."""
    parent = trace.get_current_span()
    if not parent.is_recording():
        return parent
    return tracer.start_span(name, **kw)


class ChildSpan:
    """`with ChildSpan(tracer, name, ...) as span:` -- child_span that ends the span and
    records an escaping error. A class rather than a generator-based context manager: those
    cost several microseconds a use. The span is not made current (nothing nests in it)."""

    __slots__ = ("span",)

    def __init__(self, tracer: Tracer, name: str, **kw: Any) -> None:
        self.span = child_span(tracer, name, **kw)

    def __enter__(self) -> trace.Span:
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, Exception) and self.span.is_recording():
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.span.end()


def record_status(span: trace.Span, code: grpc.StatusCode | None) -> None:
    name = code.name if code is not None else "OK"
    span.set_attribute("rpc.response.status_code", name)
    if code not in (None, grpc.StatusCode.OK):
        span.set_status(Status(StatusCode.ERROR, name))


def span_between(
    tracer: Tracer,
    name: str,
    start_s: float,
    end_s: float,
    parent: Context | None = None,
    attributes: dict[str, Any] | None = None,
    links: Sequence[trace.Link] = (),
) -> trace.Span:
    """A span for an interval measured on time.monotonic() (queue waits, batch calls)."""
    offset = time.time_ns() - time.monotonic_ns()
    span = tracer.start_span(
        name,
        context=parent,
        attributes=attributes,
        links=links,
        start_time=int(start_s * 1e9) + offset,
    )
    span.end(end_time=int(end_s * 1e9) + offset)
    return span
