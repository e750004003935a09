"""Runtimes: where and how a model's tensors are computed (ONNX Runtime or PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """What a runtime chose, shown in ModelMetadata and in the start-up log."""

    runtime: str
    device: str
    provider: str
    dtype: str = "float32"
