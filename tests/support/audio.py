"""Synthetic clips, encoded the way clients send them."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


def tone(
    seconds: float = 1.0, rate: int = 16000, freq: float = 440.0, channels: int = 1
) -> np.ndarray:
    t = np.arange(int(seconds * rate), dtype=np.float64) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.sin(2 * np.pi * 3.1 * freq * t)
    if channels == 1:
        return wave.astype(np.float32)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def encode(
    samples: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str | None = None
) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def wav(
    seconds: float = 1.0, rate: int = 16000, freq: float = 440.0, subtype: str = "PCM_16"
) -> bytes:
    return encode(tone(seconds, rate, freq), rate, "WAV", subtype)
