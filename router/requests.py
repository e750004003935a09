"""The router's plain request, independent of the public protobuf."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RouteRequest:
    request_id: str
    task: str
    audio: bytes | None = None
    pcm_f32le: bytes | None = None
    sample_rate: int = 0
    prompt: str = ""
    user_id: str | None = None
