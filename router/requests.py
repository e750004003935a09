"""The router's plain request, independent of the public protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from router.experiments.clip_length import clip_seconds


@dataclass(frozen=True)
class RouteRequest:
    request_id: str
    task: str
    audio: bytes | None = None
    pcm_f32le: bytes | None = None
    sample_rate: int = 0
    prompt: str = ""
    user_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The call's text metadata: what experiments' `dimensions` read."""

    def clip_seconds(self) -> float | None:
        return clip_seconds(self.audio, self.pcm_f32le, self.sample_rate)
