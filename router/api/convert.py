"""Public protobuf <-> the router's plain objects."""

from __future__ import annotations

import os
from collections.abc import Mapping

import grpc

from gamaserving.router.v1 import router_pb2 as rpb
from router.errors import RouteError
from router.ids import id_problem
from router.record import RouteResult
from router.requests import RouteRequest

TASKS = {
    rpb.TASK_TRANSCRIBE: "transcribe",
    rpb.TASK_TAG: "tag",
    rpb.TASK_EMBED: "embed",
    rpb.TASK_DESCRIBE: "describe",
}
TASK_ENUMS = {name: value for value, name in TASKS.items()}


def _invalid(message: str) -> RouteError:
    return RouteError(grpc.StatusCode.INVALID_ARGUMENT, message)


def route_request(req: rpb.ProcessRequest, metadata: Mapping[str, str]) -> RouteRequest:
    """`metadata`: the call's text metadata (the user may come as `x-user-id`; experiments
    may segment on other keys)."""
    task = TASKS.get(req.task)
    if task is None:
        raise _invalid(
            f"task must be one of {', '.join(rpb.Task.Name(t) for t in TASKS)}; got {req.task}"
        )
    _check_audio(req)
    if task == "describe" and not req.prompt.strip():
        raise _invalid("TASK_DESCRIBE needs a prompt")
    user_id = req.user_id or metadata.get("x-user-id") or None
    check_ids(
        ("request_id", req.request_id),
        ("user_id" if req.user_id else "x-user-id metadata", user_id or ""),
    )
    has_raw = req.HasField("raw_audio")
    return RouteRequest(
        request_id=req.request_id or os.urandom(16).hex(),
        task=task,
        audio=req.audio or None,
        pcm_f32le=req.raw_audio.pcm_f32le if has_raw else None,
        sample_rate=req.raw_audio.sample_rate if has_raw else 0,
        prompt=req.prompt,
        user_id=user_id,
        metadata=metadata,
    )


def check_ids(*fields: tuple[str, str]) -> None:
    """INVALID_ARGUMENT for the first id the results store could not hold (router/ids.py)."""
    for field, value in fields:
        problem = id_problem(field, value)
        if problem is not None:
            raise _invalid(problem)


def _check_audio(req: rpb.ProcessRequest) -> None:
    has_raw = req.HasField("raw_audio")
    if req.audio and has_raw:
        raise _invalid("send either audio (an encoded file) or raw_audio, not both")
    if not req.audio and not (has_raw and req.raw_audio.pcm_f32le):
        raise _invalid(
            "no audio: set audio (WAV, FLAC or OGG bytes) or raw_audio (float32 PCM and its rate)"
        )
    if has_raw and len(req.raw_audio.pcm_f32le) % 4:
        raise _invalid(
            "raw_audio.pcm_f32le must hold whole float32 samples (a multiple of 4 bytes)"
        )
    if has_raw and req.raw_audio.sample_rate <= 0:
        raise _invalid("raw_audio.sample_rate must be a positive number of Hz")


def process_response(req: RouteRequest, result: RouteResult) -> rpb.ProcessResponse:
    out = result.output
    response = rpb.ProcessResponse(request_id=req.request_id, text=out.text or "")
    for label, score in zip(out.labels, out.scores, strict=False):
        response.patterns.add(label=label, score=score)
    if out.features is not None:
        response.features.extend(out.features.reshape(-1).tolist())
    a = result.assignment
    route = response.route
    route.model = result.served_model
    route.model_version = out.model_version
    route.experiment = a.experiment if a else ""
    route.arm = a.arm if a else ""
    route.fallback_used = result.fallback_used
    route.fallback_reason = result.fallback_reason
    route.shadowed = result.shadowed
    for attempt in result.attempts:
        route.attempts.add(
            model=attempt.model,
            endpoint=attempt.endpoint,
            outcome=attempt.outcome,
            reason=attempt.reason,
            duration_ms=round(attempt.duration_ms, 3),
        )
    failed = result.failed_checks
    response.quality.passed = not failed
    for check in failed:
        response.quality.failed_checks.add(name=check.name, passed=False, details=check.details)
    t = response.timings
    t.total_ms, t.model_ms = round(result.total_ms, 3), round(result.model_ms, 3)
    t.queue_ms, t.compute_ms = out.queue_ms, out.compute_ms
    if out.finish_reason:
        u = response.usage
        u.finish_reason = out.finish_reason
        u.input_tokens, u.output_tokens = out.input_tokens, out.output_tokens
        u.time_to_first_token_ms = out.first_token_ms
    return response
