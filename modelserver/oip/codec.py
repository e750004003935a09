"""Protobuf <-> plain objects for OIP v2, with audio conventions from docs/protocol.md.

Both tensor encodings are accepted: typed `contents` and `raw_input_contents` (Triton's binary
form, where each BYTES element is prefixed by its 4-byte little-endian length). Responses use
the encoding the request used.
"""

from __future__ import annotations

import numpy as np

from gamaserving import oip as wire
from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.oip import Scalar, join_bytes, param_value, params_dict, set_param
from modelserver.config import Task
from modelserver.errors import invalid
from modelserver.messages import TASK_OUTPUTS, TEXT, AudioPayload, InferRequest, InferResult

AUDIO = "AUDIO"
WAVEFORM = "WAVEFORM"
PROMPT = "PROMPT"
INPUT_NAMES = (AUDIO, WAVEFORM, PROMPT)


def split_bytes(raw: bytes, what: str) -> list[bytes]:
    try:
        return wire.split_bytes(raw)
    except ValueError as exc:
        raise invalid(f"{what}: {exc}") from None


def _as_int(value: Scalar | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid(f"parameter {name} must be an integer")
    try:
        number = float(value)
    except ValueError:
        raise invalid(f"parameter {name} must be an integer, got {value!r}") from None
    if not np.isfinite(number) or number != int(number):
        raise invalid(f"parameter {name} must be an integer, got {value!r}")
    return int(number)


def _as_float(value: Scalar | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise invalid(f"parameter {name} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise invalid(f"parameter {name} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise invalid(f"parameter {name} must be finite")
    return number


class _Inputs:
    """Input tensors by name, decoded from either encoding."""

    def __init__(self, request: pb.ModelInferRequest) -> None:
        self.raw = len(request.raw_input_contents) > 0
        if self.raw and len(request.raw_input_contents) != len(request.inputs):
            raise invalid(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for "
                f"{len(request.inputs)} inputs; send one per input, in order"
            )
        self.tensors: dict[str, tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]] = {}
        for i, tensor in enumerate(request.inputs):
            if tensor.name not in INPUT_NAMES:
                raise invalid(f"unknown input {tensor.name!r}; inputs are {', '.join(INPUT_NAMES)}")
            if tensor.name in self.tensors:
                raise invalid(f"input {tensor.name} appears twice")
            if any(d < 0 for d in tensor.shape):
                raise invalid(
                    f"input {tensor.name}: shape {list(tensor.shape)} has a negative size"
                )
            raw = request.raw_input_contents[i] if self.raw else None
            self.tensors[tensor.name] = (tensor, raw)

    def bytes_scalar(self, name: str) -> bytes | None:
        if name not in self.tensors:
            return None
        tensor, raw = self.tensors[name]
        if tensor.datatype != "BYTES":
            raise invalid(f"input {name} must have datatype BYTES, got {tensor.datatype or 'none'}")
        items = split_bytes(raw, name) if raw is not None else list(tensor.contents.bytes_contents)
        if int(np.prod(tensor.shape)) != 1 or len(items) != 1:
            raise invalid(
                f"input {name} must hold exactly one element (shape [1]); got shape "
                f"{list(tensor.shape)} with {len(items)} elements"
            )
        return items[0]

    def waveform(self) -> tuple[np.ndarray, Scalar | None] | None:
        if WAVEFORM not in self.tensors:
            return None
        tensor, raw = self.tensors[WAVEFORM]
        if tensor.datatype != "FP32":
            raise invalid(
                f"input WAVEFORM must have datatype FP32, got {tensor.datatype or 'none'}"
            )
        shape = list(tensor.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)):
            raise invalid(f"input WAVEFORM must have shape [1, T] (one mono clip), got {shape}")
        count = int(np.prod(shape))
        if raw is not None:
            if len(raw) != count * 4:
                raise invalid(
                    f"input WAVEFORM: shape {shape} needs {count * 4} bytes of FP32, got {len(raw)}"
                )
            data = np.frombuffer(raw, dtype="<f4")
        else:
            data = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
            if data.size != count:
                raise invalid(
                    f"input WAVEFORM: shape {shape} needs {count} values, got {data.size}"
                )
        return data, param_value(
            tensor.parameters["sample_rate"]
        ) if "sample_rate" in tensor.parameters else None


def parse_request(request: pb.ModelInferRequest, task: Task) -> InferRequest:
    inputs = _Inputs(request)
    params = params_dict(request.parameters)
    audio = inputs.bytes_scalar(AUDIO)
    wave = inputs.waveform()
    if audio is not None and wave is not None:
        raise invalid("send either AUDIO or WAVEFORM, not both")
    if wave is not None:
        samples, tensor_rate = wave
        rate = _as_int(
            tensor_rate if tensor_rate is not None else params.get("sample_rate"), "sample_rate"
        )
        payload = AudioPayload(waveform=samples, sample_rate=rate)
    elif audio is not None:
        payload = AudioPayload(encoded=audio)
    else:
        raise invalid(
            "no audio: send input AUDIO (BYTES, an encoded file) or WAVEFORM (FP32 [1, T])"
        )
    prompt_bytes = inputs.bytes_scalar(PROMPT)
    prompt = None
    if prompt_bytes is not None:
        try:
            prompt = prompt_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid("PROMPT must be UTF-8 text") from None
    requested = frozenset(o.name for o in request.outputs)
    return InferRequest(
        id=request.id,
        task=task,
        audio=payload,
        outputs=requested or frozenset(TASK_OUTPUTS[task]),
        prompt=prompt,
        max_new_tokens=_positive(
            _as_int(params.get("max_new_tokens"), "max_new_tokens"), "max_new_tokens"
        ),
        temperature=_temperature(_as_float(params.get("temperature"), "temperature")),
    )


def _positive(value: int | None, name: str) -> int | None:
    if value is not None and value < 1:
        raise invalid(f"parameter {name} must be at least 1, got {value}")
    return value


def _temperature(value: float | None) -> float | None:
    if value is not None and not 0 <= value <= 2:
        raise invalid(f"parameter temperature must be within [0, 2], got {value}")
    return value


def task_name(request: pb.ModelInferRequest) -> str | None:
    value = param_value(request.parameters["task"]) if "task" in request.parameters else None
    if value is not None and not isinstance(value, str):
        raise invalid("parameter task must be a string (transcribe, tag, embed or describe)")
    return value


_OUTPUT_ORDER = ("TEXT", "EMBEDDING", "LABELS", "SCORES")


def encode_response(
    request: pb.ModelInferRequest, result: InferResult, name: str, version: str
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request.id)
    _add_outputs(response, request, result)
    set_param(response.parameters, "queue_ms", round(result.queue_ms, 3))
    set_param(response.parameters, "compute_ms", round(result.compute_ms, 3))
    set_param(response.parameters, "batch_size", result.batch_size)
    for key, extra in result.extra.items():
        set_param(response.parameters, key, extra)
    return response


# Triton marks the last response of a decoupled request with this parameter.
FINAL = "triton_final_response"


def piece_response(
    request: pb.ModelInferRequest, text: str, name: str, version: str
) -> pb.ModelInferResponse:
    """One decoded text piece: TEXT (BYTES [1]), not final."""
    piece = InferResult(outputs={TEXT: np.array([text.encode()], dtype=object)})
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request.id)
    _add_outputs(response, request, piece)
    set_param(response.parameters, FINAL, False)
    return response


def final_response(
    request: pb.ModelInferRequest, result: InferResult, name: str, version: str
) -> pb.ModelInferResponse:
    """The last response of a streamed request: the whole result of a one-shot task, or for
    a generated answer no outputs and its finish reason and token counts."""
    response = encode_response(request, result, name, version)
    set_param(response.parameters, FINAL, True)
    return response


def _add_outputs(
    response: pb.ModelInferResponse, request: pb.ModelInferRequest, result: InferResult
) -> None:
    raw = len(request.raw_input_contents) > 0
    for key in sorted(result.outputs, key=_OUTPUT_ORDER.index):
        value = result.outputs[key]
        out = response.outputs.add(name=key, shape=list(value.shape))
        if value.dtype == object:
            out.datatype = "BYTES"
            items = [bytes(v) for v in value.reshape(-1)]
            if raw:
                response.raw_output_contents.append(join_bytes(items))
            else:
                out.contents.bytes_contents.extend(items)
        else:
            out.datatype = "FP32"
            data = np.ascontiguousarray(value, dtype="<f4")
            if raw:
                response.raw_output_contents.append(data.tobytes())
            else:
                out.contents.fp32_contents.extend(data.reshape(-1).tolist())
