"""Audio input: decode, check, downmix and resample, with limits checked before work is spent."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from modelserver.config import Limits
from modelserver.errors import invalid
from modelserver.messages import AudioPayload

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
_SOUNDFILE_FORMATS = ("WAV", "FLAC", "OGG")


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples at the model's rate, and where they came from."""

    samples: np.ndarray
    sample_rate: int
    source_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


class AudioDecoder:
    """Turns an `AudioPayload` into model-ready `Audio` or raises INVALID_ARGUMENT with a
    message that says what is wrong (a clip over the limits too: it is the caller's to fix,
    and no other model should be tried with it)."""

    def __init__(self, target_rate: int, limits: Limits) -> None:
        self.target_rate = target_rate
        self.limits = limits

    def decode(self, payload: AudioPayload) -> Audio:
        if payload.encoded is not None:
            samples, rate = self._decode_file(payload.encoded)
        elif payload.waveform is not None:
            samples, rate = self._check_waveform(payload.waveform, payload.sample_rate)
        else:
            raise invalid("no audio: send input AUDIO (an encoded file) or WAVEFORM (FP32)")
        if not np.isfinite(samples).all():
            raise invalid("audio contains NaN or Inf samples")
        mono = samples.mean(axis=1) if samples.ndim == 2 else samples
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if rate != self.target_rate:
            mono = soxr.resample(mono, rate, self.target_rate, quality="HQ").astype(np.float32)
        return Audio(samples=mono, sample_rate=self.target_rate, source_rate=rate)

    def _check_rate(self, rate: int | None) -> int:
        if rate is None:
            raise invalid("WAVEFORM needs the parameter sample_rate (an integer, in Hz)")
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise invalid(
                f"sample_rate {rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
            )
        return rate

    def _check_duration(self, frames: int, rate: int) -> None:
        seconds = frames / rate
        if seconds > self.limits.max_audio_seconds:
            raise invalid(
                f"audio is {seconds:.2f} s long; this model accepts at most "
                f"{self.limits.max_audio_seconds:g} s"
            )
        if frames == 0:
            raise invalid(
                "audio has no samples (an empty clip, or a file truncated after its header)"
            )
        if seconds < self.limits.min_audio_seconds:
            raise invalid(
                f"audio is {seconds * 1000:.1f} ms long; this model needs at least "
                f"{self.limits.min_audio_seconds * 1000:g} ms"
            )

    def _check_size(self, nbytes: int, what: str) -> None:
        if nbytes > self.limits.max_audio_bytes:
            raise invalid(
                f"{what} is {nbytes} bytes; this model accepts at most "
                f"{self.limits.max_audio_bytes} bytes"
            )

    def _check_waveform(self, waveform: np.ndarray, rate: int | None) -> tuple[np.ndarray, int]:
        self._check_size(waveform.nbytes, "WAVEFORM")
        checked_rate = self._check_rate(rate)
        self._check_duration(waveform.shape[-1], checked_rate)
        return waveform.reshape(-1).astype(np.float32, copy=False), checked_rate

    def _decode_file(self, data: bytes) -> tuple[np.ndarray, int]:
        self._check_size(len(data), "the AUDIO file")
        if not data:
            raise invalid("AUDIO is empty (0 bytes); send a WAV, FLAC or OGG file")
        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                if f.format not in _SOUNDFILE_FORMATS:
                    raise invalid(f"unsupported audio format {f.format}; send WAV, FLAC or OGG")
                rate = self._check_rate(f.samplerate)
                # Limits come from the header, before the samples are decoded.
                self._check_duration(f.frames, rate)
                samples = f.read(dtype="float32", always_2d=True)
        except sf.LibsndfileError as exc:
            # Its str() starts "Error opening <_io.BytesIO object at 0x...>": libsndfile's own
            # words are what the caller can act on.
            raise invalid(
                f"AUDIO could not be decoded as WAV, FLAC or OGG: {exc.error_string}"
            ) from exc
        except (RuntimeError, TypeError, ValueError) as exc:
            raise invalid(f"AUDIO is corrupt or truncated: {exc}") from exc
        if samples.shape[0] == 0:
            raise invalid("AUDIO decoded to no samples (truncated file?)")
        return samples, rate
