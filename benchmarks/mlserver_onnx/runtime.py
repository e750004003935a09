"""An MLServer custom runtime for the same wav2vec2 ONNX file our server serves, doing the same
work per request: normalise the clip, run the graph, greedy CTC decode to text. MLServer ships
no ONNX runtime; this follows its custom-runtime guide (an `MLModel` with `load` and
`predict`). It runs in MLServer's own venv (benchmarks/mlserver_compare.py builds it), so it
imports nothing from this project."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxWav2Vec2(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        extra: dict[str, Any] = self.settings.parameters.extra
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, providers=["CPUExecutionProvider"]
        )
        self._vocab: list[str] = extra["vocab"]
        self._blank: int = extra["blank_id"]
        self._delimiter: str = extra["delimiter"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        waves = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        waves = waves.reshape(waves.shape[0], -1)  # adaptive batching stacks [1, n] rows
        mean = waves.mean(axis=1, keepdims=True)
        x = ((waves - mean) / np.sqrt(waves.var(axis=1, keepdims=True) + 1e-7)).astype(np.float32)
        logits, _hidden, frames = self._session.run(
            None, {"input_values": x, "attention_mask": np.ones(x.shape, np.int64)}
        )
        texts = [self._greedy(logits[i, : max(int(frames[i]), 1)]) for i in range(len(x))]
        return InferenceResponse(
            model_name=self.name, outputs=[StringCodec.encode_output("TEXT", texts)]
        )

    def _greedy(self, logits: np.ndarray) -> str:
        best = logits.argmax(axis=-1)
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        tokens = [self._vocab[i] for i in best[keep] if i != self._blank]
        return "".join(tokens).replace(self._delimiter, " ").strip()
