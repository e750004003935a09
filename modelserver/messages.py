"""Plain request and result objects shared by the core, the families and the OIP codec."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from modelserver.config import Task

# Output tensor names (docs/protocol.md).
TEXT = "TEXT"
EMBEDDING = "EMBEDDING"
LABELS = "LABELS"
SCORES = "SCORES"

TASK_OUTPUTS: dict[Task, tuple[str, ...]] = {
    Task.TRANSCRIBE: (TEXT,),
    Task.TAG: (LABELS, SCORES),
    Task.EMBED: (EMBEDDING,),
    Task.DESCRIBE: (TEXT,),
}


@dataclass(frozen=True)
class AudioPayload:
    """Audio as received: an encoded file, or raw float32 samples with their rate."""

    encoded: bytes | None = None
    waveform: np.ndarray | None = None
    sample_rate: int | None = None


@dataclass(frozen=True)
class InferRequest:
    id: str
    task: Task
    audio: AudioPayload
    outputs: frozenset[str]
    prompt: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    batch_size: int = 1
    extra: dict[str, str | int | float] = field(default_factory=dict)
