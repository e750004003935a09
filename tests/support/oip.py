"""Build OIP v2 requests the way a client would."""

from __future__ import annotations

import numpy as np

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.oip import join_bytes, param_value


def infer_request(
    model: str,
    *,
    audio: bytes | None = None,
    waveform: np.ndarray | None = None,
    sample_rate: int | str | None = None,
    prompt: str | None = None,
    task: str | None = None,
    outputs: list[str] | None = None,
    raw: bool = True,
    request_id: str = "",
    **params: int | float | str,
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id=request_id)

    def add_bytes(name: str, value: bytes) -> None:
        tensor = req.inputs.add(name=name, datatype="BYTES", shape=[1])
        if raw:
            req.raw_input_contents.append(join_bytes([value]))
        else:
            tensor.contents.bytes_contents.append(value)

    if audio is not None:
        add_bytes("AUDIO", audio)
    if waveform is not None:
        tensor = req.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, waveform.shape[-1]])
        if raw:
            req.raw_input_contents.append(np.ascontiguousarray(waveform, dtype="<f4").tobytes())
        else:
            tensor.contents.fp32_contents.extend(waveform.reshape(-1).tolist())
    if prompt is not None:
        add_bytes("PROMPT", prompt.encode())
    if isinstance(sample_rate, int):
        req.parameters["sample_rate"].int64_param = sample_rate
    elif sample_rate is not None:
        req.parameters["sample_rate"].string_param = sample_rate
    if task is not None:
        req.parameters["task"].string_param = task
    for key, value in params.items():
        if isinstance(value, int):
            req.parameters[key].int64_param = value
        elif isinstance(value, float):
            req.parameters[key].double_param = value
        else:
            req.parameters[key].string_param = value
    for name in outputs or []:
        req.outputs.add(name=name)
    return req


def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Decode a response in either encoding into arrays (BYTES as Python bytes)."""
    from gamaserving.oip import split_bytes

    result: dict[str, np.ndarray] = {}
    raw = list(response.raw_output_contents)
    for i, out in enumerate(response.outputs):
        shape = tuple(out.shape)
        if out.datatype == "BYTES":
            items = split_bytes(raw[i]) if raw else list(out.contents.bytes_contents)
            result[out.name] = np.array(items, dtype=object).reshape(shape)
        else:
            data = (
                np.frombuffer(raw[i], dtype="<f4")
                if raw
                else np.array(out.contents.fp32_contents, np.float32)
            )
            result[out.name] = data.reshape(shape)
    return result


def params(response: pb.ModelInferResponse | pb.ModelMetadataResponse) -> dict[str, object]:
    return {k: param_value(v) for k, v in response.parameters.items()}
