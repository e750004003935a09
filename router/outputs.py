"""Plain objects for what a model answered and what it declared about itself."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """From ModelMetadata: what quality checks and task routing need."""

    name: str
    version: str
    tasks: frozenset[str]
    embedding_size: int
    labels: frozenset[str]


@dataclass(frozen=True)
class ModelOutput:
    model_version: str = ""
    text: str | None = None
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    features: np.ndarray | None = None
    queue_ms: float = 0.0
    compute_ms: float = 0.0
