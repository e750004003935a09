"""Both runtimes on the CPU, the family pre/post-processing, the export check, and CUDA where
a GPU really works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelserver.audio import AudioDecoder
from modelserver.config import Task, load_model_config
from modelserver.export import (
    ExportCheckError,
    export_wav2vec2,
    verify_wav2vec2,
)
from modelserver.families import load_family
from modelserver.families.wav2vec2.ctc import greedy_decode
from modelserver.families.wav2vec2.graph import Wav2Vec2Serving, load_checkpoint
from modelserver.messages import AudioPayload, InferRequest
from modelserver.runtime import onnx_runtime, torch_runtime
from modelserver.tiny.vocab import SEED
from modelserver.tiny.wav2vec2 import build_ctc_checkpoint
from tests.support.audio import tone


def _items(family, n: int = 4):  # type: ignore[no-untyped-def]
    decoder = AudioDecoder(family.config.sample_rate, family.config.limits)
    reqs = []
    for i in range(n):
        payload = AudioPayload(waveform=tone(0.4 + 0.3 * i, freq=250 + 90 * i), sample_rate=16000)
        req = InferRequest(str(i), Task.EMBED, payload, frozenset({"TEXT", "EMBEDDING"}))
        reqs.append(family.prepare(req, decoder.decode(payload)))
    return reqs


def test_onnx_and_torch_runtimes_agree(tiny_models: Path) -> None:
    onnx = load_family(tiny_models / "wav2vec2", load_model_config(tiny_models / "wav2vec2"), "cpu")
    pt = load_family(
        tiny_models / "wav2vec2-torch", load_model_config(tiny_models / "wav2vec2-torch"), "cpu"
    )
    assert (onnx.placement.runtime, pt.placement.runtime) == ("onnx", "torch")
    a, b = onnx.run_batch(_items(onnx)), pt.run_batch(_items(pt))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x["EMBEDDING"], y["EMBEDDING"], atol=1e-4)
        assert x["TEXT"][0] == y["TEXT"][0]


def test_embedding_ignores_padding(tiny_models: Path) -> None:
    """Mean over valid frames only: a clip padded by its neighbours keeps its embedding."""
    family = load_family(
        tiny_models / "wav2vec2", load_model_config(tiny_models / "wav2vec2"), "cpu"
    )
    items = _items(family)
    together = family.run_batch(items)
    alone = family.run_batch(items[:1])
    np.testing.assert_allclose(together[0]["EMBEDDING"], alone[0]["EMBEDDING"], atol=1e-5)


def test_ctc_greedy_decode() -> None:
    vocab = ["<pad>", "<s>", "|", "A", "B"]
    frames = [3, 3, 0, 3, 2, 2, 4, 0, 1, 4, 4]
    logits = np.eye(len(vocab))[frames]
    assert greedy_decode(logits, vocab, blank_id=0, delimiter="|") == "AA BB"
    assert greedy_decode(np.zeros((0, 5)), vocab, 0, "|") == ""


def test_export_roundtrip_from_a_saved_checkpoint(tmp_path: Path) -> None:
    checkpoint = build_ctc_checkpoint(tmp_path / "ckpt", seed=SEED + 1)
    config = export_wav2vec2(checkpoint, tmp_path / "out", name="mine", version="7")
    assert (config.name, config.version, config.runtime) == ("mine", "7", "onnx")
    assert load_model_config(tmp_path / "out").wav2vec2 is not None


def test_export_check_fails_loudly_on_a_mismatch(tmp_path: Path) -> None:
    checkpoint = build_ctc_checkpoint(tmp_path / "ckpt")
    export_wav2vec2(checkpoint, tmp_path / "out")
    other = build_ctc_checkpoint(tmp_path / "other", seed=SEED + 2)
    with pytest.raises(ExportCheckError, match="differs from torch"):
        verify_wav2vec2(tmp_path / "out" / "model.onnx", Wav2Vec2Serving(load_checkpoint(other)))


def test_device_auto_falls_back_to_cpu_without_a_gpu(tiny_models: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the fallback path is not reachable here")
    _, placement = onnx_runtime.open_session(tiny_models / "wav2vec2" / "model.onnx", "auto")
    assert placement.device == "cpu"
    with pytest.raises(onnx_runtime.DeviceUnavailableError, match="--device cuda"):
        onnx_runtime.open_session(tiny_models / "wav2vec2" / "model.onnx", "cuda")
    with pytest.raises(onnx_runtime.DeviceUnavailableError):
        torch_runtime.select_device("cuda", fp16=True)


cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)"
)


@cuda
def test_onnx_cuda_provider(tiny_models: Path) -> None:
    _, placement = onnx_runtime.open_session(tiny_models / "wav2vec2" / "model.onnx", "cuda")
    assert placement.provider == "CUDAExecutionProvider"


@cuda
@pytest.mark.parametrize(
    ("dtype", "min_cos"), [("bfloat16", 0.99), ("float16", 0.995), ("float32", 0.9999)]
)
def test_gama_on_cuda_matches_cpu(tiny_models: Path, dtype: str, min_cos: float) -> None:
    """bf16 is GAMA's default on CUDA (the release trained in bf16); fp16 and fp32 selectable."""
    base = load_model_config(tiny_models / "gama")
    assert base.gama is not None
    config = base.model_copy(update={"gama": base.gama.model_copy(update={"cuda_dtype": dtype})})
    gpu = load_family(tiny_models / "gama", config, "cuda")
    cpu = load_family(tiny_models / "gama", base, "cpu")
    assert (gpu.placement.device, gpu.placement.dtype) == ("cuda", dtype)
    decoder = AudioDecoder(16000, config.limits)
    payload = AudioPayload(waveform=tone(1.0), sample_rate=16000)
    req = InferRequest("x", Task.EMBED, payload, frozenset({"EMBEDDING"}))
    a = gpu.run_batch([gpu.prepare(req, decoder.decode(payload))])[0]["EMBEDDING"]
    b = cpu.run_batch([cpu.prepare(req, decoder.decode(payload))])[0]["EMBEDDING"]
    cos = float((a @ b.T) / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cos > min_cos


def test_group_norm_checkpoint_batches_equal_lengths_only(tmp_path: Path) -> None:
    """wav2vec2-base layout: no attention mask, so a batch holds equal-length clips and each
    result equals the clip alone."""
    checkpoint = build_ctc_checkpoint(tmp_path / "ckpt", group_norm=True)
    config = export_wav2vec2(checkpoint, tmp_path / "out")
    assert config.wav2vec2 is not None and config.wav2vec2.use_attention_mask is False
    family = load_family(tmp_path / "out", config, "cpu")
    items = _items(family, n=3) + _items(family, n=2)  # two pairs of equal lengths, one single
    together = family.run_batch(items)
    for item, result in zip(items, together, strict=True):
        alone = family.run_batch([item])[0]
        np.testing.assert_allclose(result["EMBEDDING"], alone["EMBEDDING"], atol=1e-5)
        assert result["TEXT"][0] == alone["TEXT"][0]
