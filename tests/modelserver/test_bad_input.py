"""Bad input gets a precise status and an actionable message; the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from tests.modelserver.conftest import Live
from tests.support.audio import encode, tone, wav
from tests.support.oip import infer_request, outputs

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _nan_wave() -> np.ndarray:
    w = tone(0.5)
    w[100] = np.nan
    return w


def _wrong_datatype() -> pb.ModelInferRequest:
    req = infer_request("wav2vec2", audio=wav())
    req.inputs[0].datatype = "FP32"
    return req


def _wrong_shape() -> pb.ModelInferRequest:
    req = infer_request("wav2vec2", waveform=tone(0.5), sample_rate=16000)
    del req.inputs[0].shape[:]
    req.inputs[0].shape.extend([2, 4000])
    return req


def _short_raw() -> pb.ModelInferRequest:
    req = infer_request("wav2vec2", waveform=tone(0.5), sample_rate=16000)
    req.raw_input_contents[0] = req.raw_input_contents[0][:-2]
    return req


def _two_audio_elements() -> pb.ModelInferRequest:
    req = infer_request("wav2vec2", audio=wav(), raw=False)
    req.inputs[0].contents.bytes_contents.append(wav())
    return req


def _raw_count_mismatch() -> pb.ModelInferRequest:
    req = infer_request("wav2vec2", audio=wav())
    req.raw_input_contents.append(b"extra")
    return req


def _bad_length_prefix() -> pb.ModelInferRequest:
    req = infer_request("wav2vec2", audio=wav())
    req.raw_input_contents[0] = b"\xff\xff\x00\x00abc"
    return req


Case = tuple[str, Callable[[], pb.ModelInferRequest], grpc.StatusCode, str]

W2V_CASES: list[Case] = [
    ("no audio", lambda: infer_request("wav2vec2"), INVALID, "no audio"),
    ("empty file", lambda: infer_request("wav2vec2", audio=b""), INVALID, "empty"),
    ("truncated header", lambda: infer_request("wav2vec2", audio=wav()[:30]), INVALID, "AUDIO"),
    ("header only", lambda: infer_request("wav2vec2", audio=wav()[:44]), INVALID, "no samples"),
    (
        "corrupt bytes",
        lambda: infer_request("wav2vec2", audio=bytes(range(256)) * 8),
        INVALID,
        "could not be decoded",
    ),
    (
        "text as audio",
        lambda: infer_request("wav2vec2", audio=b"hello, I am not audio"),
        INVALID,
        "could not be decoded",
    ),
    (
        "nan waveform",
        lambda: infer_request("wav2vec2", waveform=_nan_wave(), sample_rate=16000),
        INVALID,
        "NaN",
    ),
    (
        "inf waveform",
        lambda: infer_request(
            "wav2vec2", waveform=np.full(8000, np.inf, np.float32), sample_rate=16000
        ),
        INVALID,
        "Inf",
    ),
    (
        "nan in float wav",
        lambda: infer_request("wav2vec2", audio=encode(_nan_wave(), subtype="FLOAT")),
        INVALID,
        "NaN",
    ),
    (
        "zero sample rate",
        lambda: infer_request("wav2vec2", waveform=tone(0.5), sample_rate=0),
        INVALID,
        "sample_rate 0",
    ),
    (
        "absurd sample rate",
        lambda: infer_request("wav2vec2", waveform=tone(0.5), sample_rate=10**9),
        INVALID,
        "outside",
    ),
    (
        "missing sample rate",
        lambda: infer_request("wav2vec2", waveform=tone(0.5)),
        INVALID,
        "sample_rate",
    ),
    (
        "text sample rate",
        lambda: infer_request("wav2vec2", waveform=tone(0.5), sample_rate="fast"),
        INVALID,
        "sample_rate",
    ),
    ("wrong datatype", _wrong_datatype, INVALID, "datatype BYTES"),
    ("wrong shape", _wrong_shape, INVALID, "shape [1, T]"),
    ("raw size mismatch", _short_raw, INVALID, "bytes of FP32"),
    ("two clips in AUDIO", _two_audio_elements, INVALID, "exactly one element"),
    ("raw count mismatch", _raw_count_mismatch, INVALID, "raw_input_contents"),
    ("bad length prefix", _bad_length_prefix, INVALID, "runs past the end"),
    (
        "both inputs",
        lambda: infer_request("wav2vec2", audio=wav(), waveform=tone(0.5), sample_rate=16000),
        INVALID,
        "not both",
    ),
    ("unknown input", lambda: _with_input("SPEECH"), INVALID, "unknown input"),
    (
        "unknown task",
        lambda: infer_request("wav2vec2", audio=wav(), task="sing"),
        INVALID,
        "unknown task 'sing'",
    ),
    (
        "unsupported task",
        lambda: infer_request("wav2vec2", audio=wav(), task="describe"),
        INVALID,
        "cannot describe",
    ),
    (
        "unknown output",
        lambda: infer_request("wav2vec2", audio=wav(), outputs=["LABELS"]),
        INVALID,
        "no output LABELS",
    ),
    (
        "too short",
        lambda: infer_request("wav2vec2", waveform=tone(0.001), sample_rate=16000),
        INVALID,
        "at least",
    ),
    ("too long", lambda: infer_request("wav2vec2", audio=wav(31.0)), INVALID, "at most 30 s"),
    (
        "too long waveform",
        lambda: infer_request("wav2vec2", waveform=tone(31.0, rate=8000), sample_rate=8000),
        INVALID,
        "at most 30 s",
    ),
    (
        "unknown model",
        lambda: infer_request("whisper", audio=wav()),
        grpc.StatusCode.NOT_FOUND,
        "serves 'wav2vec2'",
    ),
    (
        "bad max_new_tokens",
        lambda: infer_request("wav2vec2", audio=wav(), max_new_tokens=0),
        INVALID,
        "at least 1",
    ),
]


def _with_input(name: str) -> pb.ModelInferRequest:
    req = infer_request("wav2vec2", audio=wav())
    req.inputs[0].name = name
    return req


@pytest.mark.parametrize(
    ("label", "build", "code", "needle"), W2V_CASES, ids=[c[0] for c in W2V_CASES]
)
async def test_wav2vec2_bad_input(
    w2v: Live,
    label: str,
    build: Callable[[], pb.ModelInferRequest],
    code: grpc.StatusCode,
    needle: str,
) -> None:
    request = build()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await w2v.stub.ModelInfer(request)
    assert info.value.code() == code, info.value.details()
    assert needle in (info.value.details() or ""), info.value.details()
    assert "object at 0x" not in (info.value.details() or ""), info.value.details()
    # Still serving, and nothing leaked into the queue.
    ok = await w2v.stub.ModelInfer(infer_request("wav2vec2", audio=wav(0.5)))
    assert "TEXT" in outputs(ok)
    assert w2v.core.batcher is not None and w2v.core.batcher.depth == 0


GAMA_CASES: list[Case] = [
    (
        "missing prompt",
        lambda: infer_request("gama", audio=wav(), task="describe"),
        INVALID,
        "needs a non-empty PROMPT",
    ),
    (
        "blank prompt",
        lambda: infer_request("gama", audio=wav(), task="describe", prompt="   "),
        INVALID,
        "PROMPT",
    ),
    ("prompt not utf-8", lambda: _bad_prompt(), INVALID, "UTF-8"),
    (
        "huge prompt",
        lambda: infer_request("gama", audio=wav(), task="describe", prompt="why " * 1000),
        INVALID,
        "limit",
    ),
    (
        "transcribe on gama",
        lambda: infer_request("gama", audio=wav(), task="transcribe"),
        INVALID,
        "cannot transcribe",
    ),
    (
        "temperature",
        lambda: infer_request("gama", audio=wav(), task="describe", prompt="hi", temperature=9.0),
        INVALID,
        "temperature",
    ),
]


def _bad_prompt() -> pb.ModelInferRequest:
    req = infer_request("gama", audio=wav(), task="describe", prompt="x")
    from gamaserving.oip import join_bytes

    req.raw_input_contents[1] = join_bytes([b"\xff\xfe\xfa"])
    return req


@pytest.mark.parametrize(
    ("label", "build", "code", "needle"), GAMA_CASES, ids=[c[0] for c in GAMA_CASES]
)
async def test_gama_bad_input(
    gama: Live,
    label: str,
    build: Callable[[], pb.ModelInferRequest],
    code: grpc.StatusCode,
    needle: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gama.stub.ModelInfer(build())
    assert info.value.code() == code, info.value.details()
    assert needle in (info.value.details() or ""), info.value.details()
    assert "object at 0x" not in (info.value.details() or ""), info.value.details()
    ok = await gama.stub.ModelInfer(infer_request("gama", audio=wav(0.5), task="tag"))
    assert "LABELS" in outputs(ok)


async def test_byte_limit_is_the_callers_fault(serve, tiny_models) -> None:  # type: ignore[no-untyped-def]
    async with serve(tiny_models / "wav2vec2", limits={"max_audio_bytes": 10_000}) as live:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await live.stub.ModelInfer(infer_request("wav2vec2", audio=wav(2.0)))
        assert info.value.code() == INVALID
        assert "at most 10000 bytes" in (info.value.details() or "")


async def test_message_over_grpc_limit(serve, tiny_models) -> None:  # type: ignore[no-untyped-def]
    async with serve(tiny_models / "wav2vec2", settings={"max_message_bytes": 200_000}) as live:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await live.stub.ModelInfer(infer_request("wav2vec2", audio=b"\0" * 300_000))
        assert info.value.code() == EXHAUSTED
        assert "TEXT" in outputs(
            await live.stub.ModelInfer(infer_request("wav2vec2", audio=wav(0.5)))
        )
