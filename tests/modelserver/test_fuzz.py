"""Random and mutated audio against a live server: never INTERNAL, always still serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.modelserver.conftest import live_server
from tests.support.audio import encode, tone, wav
from tests.support.oip import infer_request, outputs

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SEEDS = [
    wav(0.5),
    encode(tone(0.3, 22050, channels=2), 22050, "FLAC"),
    encode(tone(0.4), 16000, "OGG", "VORBIS"),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 4096))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


payloads = st.one_of(st.binary(max_size=2048), mutated())
waveforms = st.tuples(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=4000),
    st.integers(-10, 500_000),
)


async def _call(stub, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        await stub.ModelInfer(request, timeout=30)
    except grpc.aio.AioRpcError as exc:
        # A message says what to send instead; a Python object's repr says nothing.
        assert "object at 0x" not in (exc.details() or ""), exc.details()
        return exc.code()
    return grpc.StatusCode.OK


def test_fuzz_live_server(tiny_models: Path) -> None:
    async def scenario() -> None:
        async with live_server(tiny_models / "wav2vec2") as live:
            seen: set[grpc.StatusCode] = set()

            @settings(
                max_examples=150,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            @given(audio=payloads, wave=waveforms, raw=st.booleans())
            def check(audio: bytes, wave: tuple[list[float], int], raw: bool) -> None:
                samples, rate = wave
                for request in (
                    infer_request("wav2vec2", audio=audio, raw=raw),
                    infer_request(
                        "wav2vec2",
                        waveform=np.array(samples, np.float32),
                        sample_rate=rate,
                        raw=raw,
                    ),
                ):
                    code = asyncio.run_coroutine_threadsafe(_call(live.stub, request), loop).result(
                        60
                    )
                    seen.add(code)
                    assert code in ALLOWED, code

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(check)
            assert grpc.StatusCode.INVALID_ARGUMENT in seen
            ok = await live.stub.ModelInfer(infer_request("wav2vec2", audio=wav(0.5)))
            assert "TEXT" in outputs(ok)

    asyncio.run(scenario())
