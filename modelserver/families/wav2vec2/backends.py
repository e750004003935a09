"""The two ways to run the serving graph: an ONNX session or the torch module."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from modelserver.families.wav2vec2.graph import Wav2Vec2Serving, load_checkpoint
from modelserver.runtime import Placement, onnx_runtime, torch_runtime

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


class Backend(Protocol):
    placement: Placement

    def forward(self, values: np.ndarray, mask: np.ndarray) -> Outputs: ...


class OnnxBackend:
    def __init__(self, path: Path, device: str, threads: int) -> None:
        self.session, self.placement = onnx_runtime.open_session(path, device, threads)

    def forward(self, values: np.ndarray, mask: np.ndarray) -> Outputs:
        logits, hidden, frames = onnx_runtime.run(
            self.session, {"input_values": values, "attention_mask": mask}
        )
        return logits, hidden, frames


class TorchBackend:
    def __init__(self, path: Path, device: str, fp16: bool, threads: int) -> None:
        self.device, self.dtype, self.placement = torch_runtime.select_device(device, fp16, threads)
        self.graph = Wav2Vec2Serving(load_checkpoint(path)).to(self.device, self.dtype).eval()

    def forward(self, values: np.ndarray, mask: np.ndarray) -> Outputs:
        with torch.inference_mode():
            x = torch.from_numpy(values).to(self.device, self.dtype)
            m = torch.from_numpy(mask).to(self.device)
            logits, hidden, frames = self.graph(x, m)
        return (
            logits.float().cpu().numpy(),
            hidden.float().cpu().numpy(),
            frames.cpu().numpy(),
        )
