"""A clip's length from what the router already holds, without decoding it (the router has no
audio library): raw PCM from its byte count, WAV, FLAC and Ogg (Vorbis, Opus) from their
headers. None when the container does not say (a WAV streamed with an unknown data size, an
Ogg stream of another codec); the segment is then `unknown`."""

from __future__ import annotations

import struct

DURATION_BUCKETS_S = (5.0, 15.0, 30.0)
"""Edges of the `audio_duration` segment: under 5 s, 5-15 s (GAMA's 10 s window), 15-30 s,
and longer."""


def duration_bucket(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    low = 0.0
    for edge in DURATION_BUCKETS_S:
        if seconds < edge:
            return f"{low:g}-{edge:g}s"
        low = edge
    return f"{low:g}s+"


def clip_seconds(audio: bytes | None, pcm_f32le: bytes | None, sample_rate: int) -> float | None:
    if pcm_f32le is not None:
        return len(pcm_f32le) / 4 / sample_rate if sample_rate > 0 else None
    if not audio:
        return None
    if audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
        return _wav(audio)
    if audio[:4] == b"fLaC":
        return _flac(audio)
    if audio[:4] == b"OggS":
        return _ogg(audio)
    return None


def _wav(data: bytes) -> float | None:
    """The `data` chunk's size over the `fmt ` chunk's bytes per second."""
    at, byte_rate = 12, 0
    while at + 8 <= len(data):
        chunk, size = data[at : at + 4], struct.unpack_from("<I", data, at + 4)[0]
        if chunk == b"fmt " and at + 16 <= len(data):
            byte_rate = struct.unpack_from("<I", data, at + 16)[0]
        if chunk == b"data":
            # A streamed WAV writes 0 or 0xFFFFFFFF before it knows; the bytes present then.
            if size in (0, 0xFFFFFFFF):
                size = len(data) - at - 8
            return size / byte_rate if byte_rate else None
        at += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def _flac(data: bytes) -> float | None:
    """STREAMINFO, the first metadata block: 20 bits of rate and 36 bits of total samples."""
    if len(data) < 8 + 18:
        return None
    bits = int.from_bytes(data[8 + 10 : 8 + 18], "big")
    rate, total = bits >> 44, bits & ((1 << 36) - 1)
    return total / rate if rate and total else None


def _ogg(data: bytes) -> float | None:
    """The last page's granule position (samples at the codec's rate, less Opus's pre-skip)."""
    last = data.rfind(b"OggS")
    if last < 0 or last + 14 > len(data):
        return None
    granule = struct.unpack_from("<q", data, last + 6)[0]
    vorbis, opus = data.find(b"\x01vorbis"), data.find(b"OpusHead")
    if vorbis >= 0 and vorbis + 16 <= len(data):
        rate, skip = struct.unpack_from("<I", data, vorbis + 12)[0], 0
    elif opus >= 0 and opus + 12 <= len(data):
        rate, skip = 48_000, struct.unpack_from("<H", data, opus + 10)[0]
    else:
        return None
    return (granule - skip) / rate if rate and granule > 0 else None
