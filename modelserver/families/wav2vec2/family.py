"""wav2vec2 family: normalise, pad with masks, one forward, then decode per item."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelserver.audio import Audio
from modelserver.config import ModelConfig, Wav2Vec2Settings
from modelserver.families.base import Family, top_k
from modelserver.families.wav2vec2.backends import Backend, OnnxBackend, TorchBackend
from modelserver.families.wav2vec2.ctc import greedy_decode
from modelserver.messages import EMBEDDING, LABELS, SCORES, TEXT, InferRequest


@dataclass(frozen=True)
class Item:
    values: np.ndarray
    wants: frozenset[str]


def normalise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per clip (Wav2Vec2FeatureExtractor's do_normalize)."""
    out: np.ndarray = ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


class Wav2Vec2Family(Family):
    # Decoding and normalising ~8 s of 16-bit 16 kHz audio takes well under a millisecond.
    inline_prepare_bytes = 256 * 1024

    def __init__(self, config: ModelConfig, backend: Backend, embedding_size: int) -> None:
        assert config.wav2vec2 is not None
        self.config = config
        self.settings: Wav2Vec2Settings = config.wav2vec2
        self.backend = backend
        self.placement = backend.placement
        self._embedding_size = embedding_size

    @classmethod
    def load(cls, model_dir: Path, config: ModelConfig, device: str) -> Wav2Vec2Family:
        path = model_dir / config.artifact
        backend: Backend
        if config.runtime == "onnx":
            backend = OnnxBackend(path, device, config.intra_op_threads)
        else:
            backend = TorchBackend(path, device, config.fp16, config.intra_op_threads)
        probe = np.zeros((1, config.sample_rate // 2), dtype=np.float32)
        logits, hidden, _ = backend.forward(probe, np.ones_like(probe, dtype=np.int64))
        family = cls(config, backend, int(hidden.shape[-1]))
        family._check_head(logits)
        return family

    def _check_head(self, logits: np.ndarray) -> None:
        width = int(logits.shape[-1])
        expected = (
            len(self.settings.vocab) if self.settings.head == "ctc" else len(self.config.labels)
        )
        if width != expected:
            what = "vocab" if self.settings.head == "ctc" else "labels"
            raise ValueError(
                f"model.yaml {what} has {expected} entries but the model outputs {width}"
            )

    @property
    def embedding_size(self) -> int:
        return self._embedding_size

    def prepare(self, request: InferRequest, audio: Audio) -> Item:
        return Item(values=normalise(audio.samples), wants=request.outputs)

    def run_batch(self, items: list[Item]) -> list[dict[str, np.ndarray]]:
        results: list[dict[str, np.ndarray]] = [{} for _ in items]
        for group in self._groups(items):
            self._run_group([items[i] for i in group], [results[i] for i in group])
        return results

    def _groups(self, items: list[Item]) -> list[list[int]]:
        if self.settings.use_attention_mask:
            return [list(range(len(items)))]
        # Without a mask, padding would change the result: batch equal lengths only.
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_length[len(item.values)].append(i)
        return list(by_length.values())

    def _run_group(self, items: list[Item], out: list[dict[str, np.ndarray]]) -> None:
        length = max(len(item.values) for item in items)
        values = np.zeros((len(items), length), dtype=np.float32)
        mask = np.zeros((len(items), length), dtype=np.int64)
        for row, item in enumerate(items):
            values[row, : len(item.values)] = item.values
            mask[row, : len(item.values)] = 1
        logits, hidden, frames = self.backend.forward(values, mask)
        for row, item in enumerate(items):
            n = max(int(frames[row]), 1)
            result = out[row]
            if EMBEDDING in item.wants:
                result[EMBEDDING] = hidden[row, :n].mean(axis=0, keepdims=True).astype(np.float32)
            if self.settings.head == "ctc":
                if TEXT in item.wants:
                    text = greedy_decode(
                        logits[row, :n],
                        self.settings.vocab,
                        self.settings.blank_id,
                        self.settings.word_delimiter,
                    )
                    result[TEXT] = np.array([text.encode()], dtype=object)
            elif LABELS in item.wants or SCORES in item.wants:
                result.update(top_k(softmax(logits[row]), self.config.labels, self.settings.top_k))
