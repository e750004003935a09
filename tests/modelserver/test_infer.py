"""ModelInfer, ModelMetadata and the readiness RPCs over a real channel."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from modelserver.config import TAG_PROMPT
from modelserver.families.gama.tags import match_labels
from modelserver.tiny.vocab import TAG_LABELS
from tests.modelserver.conftest import Live
from tests.support.audio import tone, wav
from tests.support.oip import infer_request, outputs, params


async def test_server_rpcs(w2v: Live) -> None:
    assert (await w2v.stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await w2v.stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await w2v.stub.ModelReady(pb.ModelReadyRequest(name="wav2vec2"))).ready
    meta = await w2v.stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "gama-serving-modelserver"


async def test_wav2vec2_metadata_declares_family_and_placement(w2v: Live) -> None:
    meta = await w2v.stub.ModelMetadata(pb.ModelMetadataRequest(name="wav2vec2"))
    p = params(meta)
    assert meta.versions == ["tiny-1"]
    assert p["family"] == "wav2vec2"
    assert p["tasks"] == "transcribe,embed"
    assert (p["runtime"], p["device"], p["provider"]) == ("onnx", "cpu", "CPUExecutionProvider")
    assert p["embedding_size"] == 64
    names = {o.name: (o.datatype, list(o.shape)) for o in meta.outputs}
    assert names == {"TEXT": ("BYTES", [1]), "EMBEDDING": ("FP32", [1, 64])}
    assert {i.name for i in meta.inputs} == {"AUDIO", "WAVEFORM"}


async def test_gama_metadata(gama: Live) -> None:
    meta = await gama.stub.ModelMetadata(pb.ModelMetadataRequest(name="gama"))
    p = params(meta)
    assert p["tasks"] == "tag,embed,describe"
    assert (p["runtime"], p["device"]) == ("torch", "cpu")
    assert p["label_count"] == 8
    assert {i.name for i in meta.inputs} == {"AUDIO", "WAVEFORM", "PROMPT"}
    assert {o.name for o in meta.outputs} == {"TEXT", "EMBEDDING", "LABELS", "SCORES"}


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
async def test_wav2vec2_transcript_and_embedding(w2v: Live, raw: bool) -> None:
    req = infer_request(
        "wav2vec2", audio=wav(1.0), outputs=["TEXT", "EMBEDDING"], raw=raw, request_id="r1"
    )
    resp = await w2v.stub.ModelInfer(req)
    out = outputs(resp)
    assert resp.id == "r1" and resp.model_version == "tiny-1"
    assert out["TEXT"].shape == (1,) and isinstance(out["TEXT"][0], bytes)
    assert out["EMBEDDING"].shape == (1, 64) and np.isfinite(out["EMBEDDING"]).all()
    assert (len(resp.raw_output_contents) > 0) == raw
    p = params(resp)
    assert p["batch_size"] == 1 and float(p["compute_ms"]) > 0 and float(p["queue_ms"]) >= 0


async def test_default_task_outputs(w2v: Live) -> None:
    out = outputs(await w2v.stub.ModelInfer(infer_request("wav2vec2", audio=wav(), task="embed")))
    assert set(out) == {"EMBEDDING"}
    out = outputs(await w2v.stub.ModelInfer(infer_request("wav2vec2", audio=wav())))
    assert set(out) == {"TEXT"}


async def test_waveform_and_file_agree(w2v: Live) -> None:
    """The same samples as FP32 WAVEFORM or as a float WAV file give the same embedding."""
    samples = tone(1.0)
    a = outputs(
        await w2v.stub.ModelInfer(
            infer_request("wav2vec2", waveform=samples, sample_rate=16000, task="embed")
        )
    )
    from tests.support.audio import encode

    b = outputs(
        await w2v.stub.ModelInfer(
            infer_request("wav2vec2", audio=encode(samples, subtype="FLOAT"), task="embed")
        )
    )
    np.testing.assert_allclose(a["EMBEDDING"], b["EMBEDDING"], atol=1e-5)


async def test_gama_tags_embedding_and_answer(gama: Live) -> None:
    tags = outputs(await gama.stub.ModelInfer(infer_request("gama", audio=wav(2.0), task="tag")))
    # Tags are the labels GAMA's greedy answer to the tag prompt names: ask it the same
    # question at temperature 0 and read the answer.
    answer = outputs(
        await gama.stub.ModelInfer(
            infer_request(
                "gama",
                audio=wav(2.0),
                task="describe",
                prompt=TAG_PROMPT,
                temperature=0.0,
                max_new_tokens=48,
            )
        )
    )["TEXT"][0].decode()
    labels = [label.decode() for label in tags["LABELS"]]
    assert labels == [label for label, _ in match_labels(answer, TAG_LABELS)]
    assert labels, f"the tiny model's answer names no label: {answer!r}"
    assert all(re.search(rf"\b{label}", answer) for label in labels)
    assert tags["SCORES"].shape == (len(labels),) and (tags["SCORES"] == 1.0).all()
    emb = outputs(await gama.stub.ModelInfer(infer_request("gama", audio=wav(2.0), task="embed")))
    assert emb["EMBEDDING"].shape == (1, 128)
    resp = await gama.stub.ModelInfer(
        infer_request(
            "gama", audio=wav(2.0), task="describe", prompt="What do you hear?", max_new_tokens=6
        )
    )
    text = outputs(resp)["TEXT"][0].decode()
    assert 1 <= len(text.split()) <= 6


async def test_gama_refuses_outputs_of_another_task(gama: Live) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gama.stub.ModelInfer(
            infer_request(
                "gama", audio=wav(1.0), task="describe", prompt="Hi", outputs=["TEXT", "LABELS"]
            )
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "task tag" in (info.value.details() or "")


async def test_gama_sampling_is_reproducible_per_request_id(gama: Live) -> None:
    def req(rid: str) -> pb.ModelInferRequest:
        return infer_request(
            "gama",
            audio=wav(1.0),
            task="describe",
            prompt="Describe it.",
            request_id=rid,
            max_new_tokens=12,
            temperature=1.5,
        )

    first = outputs(await gama.stub.ModelInfer(req("a")))["TEXT"][0]
    again = outputs(await gama.stub.ModelInfer(req("a")))["TEXT"][0]
    others = {outputs(await gama.stub.ModelInfer(req(f"b{i}")))["TEXT"][0] for i in range(4)}
    assert first == again
    assert len(others | {first}) > 1


async def test_resampling_and_stereo(w2v: Live) -> None:
    """A 44.1 kHz stereo file is downmixed and resampled to the model's 16 kHz."""
    from tests.support.audio import encode

    stereo = tone(1.0, rate=44100, channels=2)
    out = outputs(
        await w2v.stub.ModelInfer(
            infer_request("wav2vec2", audio=encode(stereo, 44100), task="embed")
        )
    )
    mono16 = tone(1.0, rate=16000, channels=2).mean(axis=1)
    ref = outputs(
        await w2v.stub.ModelInfer(
            infer_request("wav2vec2", waveform=mono16, sample_rate=16000, task="embed")
        )
    )
    cos = float(
        np.dot(out["EMBEDDING"][0], ref["EMBEDDING"][0])
        / (np.linalg.norm(out["EMBEDDING"]) * np.linalg.norm(ref["EMBEDDING"]))
    )
    assert cos > 0.99
