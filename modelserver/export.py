"""Export transformers checkpoints for serving, checked numerically against torch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import Wav2Vec2CTCTokenizer

from modelserver.config import ModelConfig, Wav2Vec2Settings, write_model_config
from modelserver.families.wav2vec2.graph import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    Wav2Vec2Serving,
    load_checkpoint,
)

log = logging.getLogger(__name__)

OPSET = 17


class ExportCheckError(RuntimeError):
    """The exported graph disagrees with torch beyond tolerance."""


def _check_inputs(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Different batch sizes and lengths, with padding, so dynamic axes and masks are exercised."""
    rng = np.random.default_rng(seed)
    cases = []
    for batch, length in ((1, 16000), (3, 24000)):
        values = rng.standard_normal((batch, length)).astype(np.float32)
        mask = np.ones((batch, length), dtype=np.int64)
        if batch > 1:
            mask[-1, length // 3 :] = 0
            values[-1, length // 3 :] = 0
        cases.append((values, mask))
    return cases


def compare(
    name: str, expected: list[np.ndarray], actual: list[np.ndarray], atol: float, rtol: float
) -> float:
    """Largest absolute difference; raises ExportCheckError beyond `atol + rtol * |expected|`."""
    worst = 0.0
    for label, want, got in zip(OUTPUT_NAMES, expected, actual, strict=False):
        if want.shape != got.shape:
            raise ExportCheckError(
                f"{name}: output {label} has shape {got.shape}, torch gives {want.shape}"
            )
        diff = np.abs(want.astype(np.float64) - got.astype(np.float64))
        worst = max(worst, float(diff.max(initial=0.0)))
        if not np.all(diff <= atol + rtol * np.abs(want)):
            raise ExportCheckError(
                f"{name}: output {label} differs from torch by up to {diff.max():.3g} "
                f"(tolerance atol={atol:g}, rtol={rtol:g})"
            )
    return worst


def verify_wav2vec2(
    onnx_path: Path, graph: Wav2Vec2Serving, atol: float = 1e-4, rtol: float = 1e-3
) -> float:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for values, mask in _check_inputs():
        with torch.inference_mode():
            want = [t.numpy() for t in graph(torch.from_numpy(values), torch.from_numpy(mask))]
        got = session.run(None, {"input_values": values, "attention_mask": mask})
        worst = max(worst, compare(str(onnx_path), want, got, atol, rtol))
    return worst


def export_wav2vec2(
    checkpoint: str | Path,
    out: Path,
    name: str = "wav2vec2",
    version: str = "1",
    atol: float = 1e-4,
) -> ModelConfig:
    """ONNX with dynamic batch and time axes, plus vocab or labels, into a model directory."""
    out.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(checkpoint, attn_implementation="eager")
    graph = Wav2Vec2Serving(model).eval()
    values, mask = _check_inputs()[1]
    onnx_path = out / "model.onnx"
    with warnings.catch_warnings():
        # The legacy TorchScript exporter warns that it is deprecated; the dynamo one needs
        # onnxscript and does not yet export wav2vec2's dynamic-length masks cleanly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (torch.from_numpy(values), torch.from_numpy(mask)),
            str(onnx_path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes={
                "input_values": {0: "batch", 1: "samples"},
                "attention_mask": {0: "batch", 1: "samples"},
                "logits": {0: "batch", 1: "frames"},
                "hidden": {0: "batch", 1: "frames"},
                "frames": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    worst = verify_wav2vec2(onnx_path, graph, atol=atol)
    log.info("exported %s: max |onnx - torch| = %.3g", onnx_path, worst)
    cfg = model.config
    settings = Wav2Vec2Settings(use_attention_mask=cfg.feat_extract_norm == "layer")
    labels: list[str] = []
    if "SequenceClassification" in type(model).__name__:
        labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        settings = settings.model_copy(update={"head": "classification"})
    else:
        try:
            # Local directory or hub id alike (the hub needs HF_HUB_OFFLINE unset).
            table = Wav2Vec2CTCTokenizer.from_pretrained(checkpoint).get_vocab()
        except (OSError, ValueError, TypeError) as exc:
            raise FileNotFoundError(f"{checkpoint}: a CTC checkpoint needs its tokenizer") from exc
        vocab = [t for t, _ in sorted(table.items(), key=lambda kv: kv[1])]
        settings = settings.model_copy(
            update={"vocab": vocab, "blank_id": int(cfg.pad_token_id or 0)}
        )
    config = ModelConfig(
        name=name,
        version=version,
        family="wav2vec2",
        runtime="onnx",
        artifact="model.onnx",
        labels=labels,
        wav2vec2=settings,
    )
    write_model_config(out, config)
    return config
