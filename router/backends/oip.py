"""RouteRequest -> ModelInferRequest, and ModelInferResponse / ModelMetadataResponse -> plain
objects. The router forwards audio bytes untouched; it never decodes audio."""

from __future__ import annotations

import numpy as np

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.oip import join_bytes, params_dict, split_bytes
from router.outputs import ModelInfo, ModelOutput
from router.requests import RouteRequest

# The call's name in telemetry (semantic conventions' rpc.method: service/method).
MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"


def infer_request(model_name: str, req: RouteRequest) -> pb.ModelInferRequest:
    out = pb.ModelInferRequest(model_name=model_name, id=req.request_id)
    if req.audio is not None:
        out.inputs.add(name="AUDIO", datatype="BYTES", shape=[1])
        out.raw_input_contents.append(join_bytes([req.audio]))
    else:
        assert req.pcm_f32le is not None
        out.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, len(req.pcm_f32le) // 4])
        out.raw_input_contents.append(req.pcm_f32le)
        out.parameters["sample_rate"].int64_param = req.sample_rate
    if req.task == "describe":
        out.inputs.add(name="PROMPT", datatype="BYTES", shape=[1])
        out.raw_input_contents.append(join_bytes([req.prompt.encode()]))
    out.parameters["task"].string_param = req.task
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
    )


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
    )
