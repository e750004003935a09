"""Audio decoding: formats, downmix, resampling, limits."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from modelserver.audio import AudioDecoder
from modelserver.config import Limits
from modelserver.errors import InferenceError
from modelserver.messages import AudioPayload
from tests.support.audio import encode, tone

DECODER = AudioDecoder(16000, Limits())


@pytest.mark.parametrize(
    ("fmt", "subtype", "atol"),
    [
        ("WAV", "PCM_16", 1e-4),
        ("WAV", "PCM_24", 1e-6),
        ("WAV", "PCM_32", 1e-7),
        ("WAV", "FLOAT", 0),
        ("FLAC", "PCM_16", 1e-4),
        ("FLAC", "PCM_24", 1e-6),
        ("OGG", "VORBIS", None),
    ],
)
def test_formats_decode_to_the_same_samples(fmt: str, subtype: str, atol: float | None) -> None:
    samples = tone(0.5)
    audio = DECODER.decode(AudioPayload(encoded=encode(samples, 16000, fmt, subtype)))
    assert audio.sample_rate == 16000 and audio.samples.dtype == np.float32
    if atol is None:  # lossy: same length (within codec padding) and strongly correlated
        n = min(len(samples), len(audio.samples))
        assert abs(len(audio.samples) - len(samples)) < 2048
        assert np.corrcoef(samples[:n], audio.samples[:n])[0, 1] > 0.95
    else:
        np.testing.assert_allclose(audio.samples, samples, atol=atol)


def test_stereo_is_downmixed_and_resampled() -> None:
    stereo = tone(1.0, rate=48000, channels=2)
    audio = DECODER.decode(AudioPayload(encoded=encode(stereo, 48000)))
    assert audio.source_rate == 48000 and audio.sample_rate == 16000
    assert abs(len(audio.samples) - 16000) <= 1
    expected = tone(1.0, rate=16000, channels=2).mean(axis=1)
    np.testing.assert_allclose(audio.samples[100:-100], expected[100:-100], atol=2e-2)


def test_raw_waveform_is_resampled() -> None:
    audio = DECODER.decode(AudioPayload(waveform=tone(1.0, rate=8000), sample_rate=8000))
    assert len(audio.samples) == 16000


def test_duration_limit_is_checked_from_the_header() -> None:
    decoder = AudioDecoder(16000, Limits(max_audio_seconds=1.0))
    with pytest.raises(InferenceError) as info:
        decoder.decode(AudioPayload(encoded=encode(tone(1.5))))
    assert info.value.status is grpc.StatusCode.INVALID_ARGUMENT
