"""The contract between the serving core and a model family."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserver.audio import Audio
from modelserver.config import ModelConfig, Task
from modelserver.errors import invalid
from modelserver.generation.scheduler import Engine, GenerationRequest
from modelserver.messages import EMBEDDING, LABELS, SCORES, TEXT, InferRequest
from modelserver.runtime import Placement


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


class Family(ABC):
    """Pre-processing per request (`prepare`), then one model call per batch (`run_batch`).

    `prepare` runs on a thread pool, `run_batch` on the single inference worker thread; the
    batcher wraps `run_batch`, so family code never sees queues or deadlines.
    """

    config: ModelConfig
    placement: Placement
    inline_prepare_bytes: int = -1
    """Inputs up to this size are prepared on the event loop; -1 means never (costly features)."""

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self.config.tasks

    @property
    @abstractmethod
    def embedding_size(self) -> int: ...

    @abstractmethod
    def prepare(self, request: InferRequest, audio: Audio) -> Any:
        """Model-ready features for one request; raises InferenceError on bad input."""

    @abstractmethod
    def run_batch(self, items: list[Any]) -> list[dict[str, np.ndarray]]:
        """One output dict per prepared item, in order."""

    def engine(self) -> Engine | None:
        """The running decode batch for continuous batching, for a family that generates."""
        return None

    def generation(self, item: Any) -> GenerationRequest | None:
        """The sequence a prepared item decodes per step, when the model server runs an
        `engine` (continuous batching on); None sends it to `run_batch`."""
        return None

    def output_specs(self) -> list[TensorSpec]:
        specs: list[TensorSpec] = []
        if Task.TRANSCRIBE in self.tasks or Task.DESCRIBE in self.tasks:
            specs.append(TensorSpec(TEXT, "BYTES", (1,)))
        if Task.EMBED in self.tasks:
            specs.append(TensorSpec(EMBEDDING, "FP32", (1, self.embedding_size)))
        if Task.TAG in self.tasks:
            specs += [TensorSpec(LABELS, "BYTES", (-1,)), TensorSpec(SCORES, "FP32", (-1,))]
        return specs

    def check_outputs(self, request: InferRequest) -> None:
        supported = {spec.name for spec in self.output_specs()}
        unknown = sorted(request.outputs - supported)
        if unknown:
            raise invalid(
                f"model {self.config.name} has no output {', '.join(unknown)}; "
                f"it offers {', '.join(sorted(supported))}"
            )


def top_k(scores: np.ndarray, labels: list[str], k: int) -> dict[str, np.ndarray]:
    """Highest scores first, with their label names."""
    order = np.argsort(-scores, kind="stable")[: min(k, len(labels))]
    return {
        LABELS: np.array([labels[i].encode() for i in order], dtype=object),
        SCORES: scores[order].astype(np.float32),
    }
