"""W3C trace context in gRPC metadata: what inject writes, extract reads back, for sampled
and unsampled contexts, with and without tracestate, as str or bytes values."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from gamaserving.telemetry.tracing import extract, inject

CONTEXTS = [
    SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1)),
    SpanContext(0x1, 0x2, False, TraceFlags(0)),
    SpanContext(
        0xFFFF << 100,
        0xABCDEF,
        False,
        TraceFlags(1),
        TraceState([("vendor", "v1"), ("other", "x-y")]),
    ),
]


def test_an_invalid_span_injects_nothing() -> None:
    assert inject(trace.INVALID_SPAN) == []


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_extract_reads_gRPC_metadata_back(ctx: SpanContext) -> None:
    metadata = [("user-agent", "grpc-python"), *inject(NonRecordingSpan(ctx))]
    as_bytes = [(k, v.encode()) for k, v in metadata]
    for md in (metadata, as_bytes):
        parent = extract(md)
        assert parent is not None
        got = trace.get_current_span(parent).get_span_context()
        assert (got.trace_id, got.span_id, got.trace_flags) == (
            ctx.trace_id,
            ctx.span_id,
            ctx.trace_flags,
        )
        assert got.trace_state == ctx.trace_state
        assert got.is_remote


def test_metadata_without_trace_context_extracts_to_none() -> None:
    assert extract([("user-agent", "grpc-python")]) is None
    assert extract(None) is None


def test_binary_metadata_beside_it_is_left_alone() -> None:
    """-bin metadata values are arbitrary bytes; decoding them as text used to raise."""
    ctx = CONTEXTS[0]
    metadata = [("x-custom-bin", b"\xff\xfe\x00"), *inject(NonRecordingSpan(ctx))]
    parent = extract(metadata)
    assert parent is not None
    assert trace.get_current_span(parent).get_span_context().trace_id == ctx.trace_id
    assert extract([("x-custom-bin", b"\xff\xfe\x00")]) is None
