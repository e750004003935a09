"""A request over a model's declared limits (ModelMetadata) is the caller's to fix: refused
with INVALID_ARGUMENT before it is sent, in the model server's own words, and never retried
on another model."""

from __future__ import annotations

from gamaserving.oip import InputLimits
from router.requests import RouteRequest


def limit_problem(req: RouteRequest, model: str, limits: InputLimits) -> str | None:
    """What `req` breaks of `model`'s limits (the router cannot decode audio, so an encoded
    file's duration is the model server's to check); None if nothing it can see."""
    audio = req.audio if req.audio is not None else req.pcm_f32le
    what = "the AUDIO file" if req.audio is not None else "WAVEFORM"
    if audio is not None and 0 < limits.max_audio_bytes < len(audio):
        return (
            f"{what} is {len(audio)} bytes; model {model} accepts at most "
            f"{limits.max_audio_bytes} bytes"
        )
    if req.pcm_f32le is not None and req.sample_rate > 0 and limits.max_audio_seconds > 0:
        seconds = len(req.pcm_f32le) / 4 / req.sample_rate
        if seconds > limits.max_audio_seconds:
            return (
                f"audio is {seconds:.2f} s long; model {model} accepts at most "
                f"{limits.max_audio_seconds:g} s"
            )
    if 0 < limits.max_prompt_chars < len(req.prompt):
        return (
            f"PROMPT has {len(req.prompt)} characters; model {model} accepts at most "
            f"{limits.max_prompt_chars}"
        )
    return None
