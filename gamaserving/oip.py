"""Open Inference Protocol wire helpers shared by the model server, the router and the offline
evaluation: parameters, BYTES tensors, audio requests, and responses and metadata as plain
objects."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from gamaserving.inference import grpc_predict_v2_pb2 as pb

Scalar = bool | int | float | str


def param_value(p: pb.InferParameter) -> Scalar | None:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def params_dict(params: Mapping[str, pb.InferParameter]) -> dict[str, Scalar | None]:
    return {key: param_value(value) for key, value in params.items()}


def set_param(target: Mapping[str, pb.InferParameter], key: str, value: Scalar) -> None:
    p = target[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = value


def split_bytes(raw: bytes) -> list[bytes]:
    """Triton's serialised BYTES tensor: <uint32 little-endian length><bytes>, repeated."""
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("raw BYTES tensor is truncated (a length prefix is cut off)")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise ValueError(f"raw BYTES element of {n} bytes runs past the end of the data")
        out.append(raw[offset : offset + n])
        offset += n
    return out


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


@dataclass(frozen=True)
class InputLimits:
    """What a model server accepts (its `limits`), from ModelMetadata; 0 where it did not say
    (a server without our metadata extension)."""

    max_audio_bytes: int = 0
    max_audio_seconds: float = 0.0
    max_prompt_chars: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """From ModelMetadata: what quality checks, task routing and the router's input checks
    need."""

    name: str
    version: str
    tasks: frozenset[str]
    embedding_size: int
    labels: frozenset[str]
    limits: InputLimits = InputLimits()


@dataclass(frozen=True)
class ModelOutput:
    model_version: str = ""
    text: str | None = None
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    features: np.ndarray | None = None
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    finish_reason: str = ""
    """Generated answers: `stop` or `length`."""
    input_tokens: int = 0
    output_tokens: int = 0
    first_token_ms: float = 0.0


def audio_request(
    model_name: str,
    request_id: str,
    task: str,
    audio: bytes | None = None,
    pcm_f32le: bytes | None = None,
    sample_rate: int = 0,
    prompt: str = "",
) -> pb.ModelInferRequest:
    """Audio as the model servers take it: an encoded file (AUDIO) or raw little-endian FP32
    (WAVEFORM with `sample_rate`), PROMPT for describe, and the `task` parameter."""
    out = pb.ModelInferRequest(model_name=model_name, id=request_id)
    if audio is not None:
        out.inputs.add(name="AUDIO", datatype="BYTES", shape=[1])
        out.raw_input_contents.append(join_bytes([audio]))
    else:
        assert pcm_f32le is not None
        out.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, len(pcm_f32le) // 4])
        out.raw_input_contents.append(pcm_f32le)
        out.parameters["sample_rate"].int64_param = sample_rate
    if task == "describe":
        out.inputs.add(name="PROMPT", datatype="BYTES", shape=[1])
        out.raw_input_contents.append(join_bytes([prompt.encode()]))
    out.parameters["task"].string_param = task
    return out


def _tensor(resp: pb.ModelInferResponse, index: int) -> np.ndarray | list[bytes]:
    tensor = resp.outputs[index]
    raw = resp.raw_output_contents[index] if resp.raw_output_contents else None
    if tensor.datatype == "BYTES":
        return split_bytes(raw) if raw is not None else list(tensor.contents.bytes_contents)
    if raw is not None:
        return np.frombuffer(raw, dtype="<f4")
    return np.asarray(tensor.contents.fp32_contents, dtype=np.float32)


def parse_response(resp: pb.ModelInferResponse) -> ModelOutput:
    values = {t.name: _tensor(resp, i) for i, t in enumerate(resp.outputs)}
    text = values.get("TEXT")
    labels = values.get("LABELS")
    scores = values.get("SCORES")
    features = values.get("EMBEDDING")
    timing = {k: v for k, v in params_dict(resp.parameters).items() if isinstance(v, int | float)}
    return ModelOutput(
        model_version=resp.model_version,
        text=text[0].decode("utf-8", errors="replace") if isinstance(text, list) and text else None,
        labels=[b.decode("utf-8", errors="replace") for b in labels]
        if isinstance(labels, list)
        else [],
        scores=scores.tolist() if isinstance(scores, np.ndarray) else [],
        features=features if isinstance(features, np.ndarray) else None,
        queue_ms=float(timing.get("queue_ms", 0.0)),
        compute_ms=float(timing.get("compute_ms", 0.0)),
        finish_reason=str(params_dict(resp.parameters).get("finish_reason") or ""),
        input_tokens=int(timing.get("input_tokens", 0)),
        output_tokens=int(timing.get("output_tokens", 0)),
        first_token_ms=float(timing.get("time_to_first_token_ms", 0.0)),
    )


_Num = TypeVar("_Num", int, float)


def parse_metadata(meta: pb.ModelMetadataResponse) -> ModelInfo:
    params = params_dict(meta.parameters)
    tasks = str(params.get("tasks") or "")
    if not tasks:
        # A server without our metadata extension: infer tasks from its outputs.
        names = {o.name for o in meta.outputs}
        inferred = {"embed"} if "EMBEDDING" in names else set()
        inferred |= {"tag"} if "LABELS" in names else set()
        inferred |= (
            {"transcribe"}
            if "TEXT" in names and "PROMPT" not in {i.name for i in meta.inputs}
            else set()
        )
        inferred |= {"describe"} if "PROMPT" in {i.name for i in meta.inputs} else set()
        tasks = ",".join(sorted(inferred))
    size = params.get("embedding_size")
    if not isinstance(size, int):
        size = next(
            (int(o.shape[-1]) for o in meta.outputs if o.name == "EMBEDDING" and o.shape), 0
        )
    labels = str(params.get("labels") or "")
    return ModelInfo(
        name=meta.name,
        version=meta.versions[0] if meta.versions else "",
        tasks=frozenset(t for t in tasks.split(",") if t),
        embedding_size=max(int(size), 0),
        labels=frozenset(label for label in labels.split(",") if label),
        limits=InputLimits(
            max_audio_bytes=_number(params.get("max_audio_bytes"), int),
            max_audio_seconds=_number(params.get("max_audio_seconds"), float),
            max_prompt_chars=_number(params.get("max_prompt_chars"), int),
        ),
    )


def _number(value: object, kind: type[_Num]) -> _Num:
    """A metadata parameter as a number; 0 (unknown) when absent or not a number."""
    try:
        return kind(value) if isinstance(value, int | float | str) else kind(0)
    except ValueError:
        return kind(0)
