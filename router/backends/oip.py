"""RouteRequest -> ModelInferRequest. The router forwards audio bytes untouched; it never
decodes audio. The wire helpers themselves are shared (gamaserving.oip)."""

from __future__ import annotations

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.oip import audio_request
from router.requests import RouteRequest

# The call's name in telemetry (semantic conventions' rpc.method: service/method).
MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"


def infer_request(model_name: str, req: RouteRequest) -> pb.ModelInferRequest:
    return audio_request(
        model_name, req.request_id, req.task, req.audio, req.pcm_f32le, req.sample_rate, req.prompt
    )
