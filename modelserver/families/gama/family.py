"""GAMA family: fbank features, one encoder pass per batch, answers only where asked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from modelserver.audio import Audio
from modelserver.config import GamaSettings, ModelConfig, Task
from modelserver.errors import invalid
from modelserver.families.base import Family, top_k
from modelserver.families.gama.features import GamaFeatures
from modelserver.families.gama.model import Decoding, GamaModel, request_seed
from modelserver.messages import EMBEDDING, LABELS, SCORES, TEXT, InferRequest
from modelserver.runtime import Placement, torch_runtime


@dataclass(frozen=True)
class Item:
    fbank: np.ndarray
    wants: frozenset[str]
    prompt_ids: list[int] | None
    max_new_tokens: int
    temperature: float
    seed: int


class GamaFamily(Family):
    def __init__(
        self, config: ModelConfig, model: GamaModel, tokenizer: Any, placement: Placement
    ) -> None:
        assert config.gama is not None
        self.config = config
        self.settings: GamaSettings = config.gama
        self.model = model
        self.tokenizer = tokenizer
        self.placement = placement
        self.features = GamaFeatures(self.settings, config.sample_rate)
        self.bos_id: int | None = tokenizer.bos_token_id
        self.eos_id: int = int(tokenizer.eos_token_id)
        specials = {tokenizer.pad_token_id, tokenizer.unk_token_id, self.bos_id}
        self.suppress = sorted(i for i in specials if i is not None and i != self.eos_id)

    @classmethod
    def load(cls, model_dir: Path, config: ModelConfig, device: str) -> GamaFamily:
        assert config.gama is not None
        g = config.gama
        dev, dtype, placement = torch_runtime.select_device(
            device, config.fp16, config.intra_op_threads
        )
        model = GamaModel.load(
            model_dir / g.encoder,
            model_dir / g.lm,
            model_dir / g.projector,
            g.num_audio_tokens,
            dev,
            dtype,
        )
        labels = model.encoder.config.num_labels
        if labels != len(config.labels):
            raise ValueError(
                f"model.yaml labels has {len(config.labels)} entries; the encoder outputs {labels}"
            )
        tokenizer = AutoTokenizer.from_pretrained(model_dir / g.tokenizer)
        if tokenizer.eos_token_id is None:
            raise ValueError("gama.tokenizer: the tokenizer has no end-of-sequence token")
        return cls(config, model, tokenizer, placement)

    @property
    def embedding_size(self) -> int:
        return int(self.model.encoder.config.hidden_size)

    def format_prompt(self, prompt: str) -> str:
        return f"{self.settings.system_prompt}\n\n### Instruction:\n{prompt}\n\n### Response:\n"

    def prepare(self, request: InferRequest, audio: Audio) -> Item:
        prompt_ids = None
        if TEXT in request.outputs:
            if not request.prompt or not request.prompt.strip():
                raise invalid(f"task {Task.DESCRIBE.value} needs a non-empty PROMPT input")
            text = self.format_prompt(request.prompt)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            prompt_ids = ([self.bos_id] if self.bos_id is not None else []) + list(ids)
        gen = self.settings.generation
        max_new = min(request.max_new_tokens or gen.max_new_tokens, gen.max_new_tokens)
        temperature = gen.temperature if request.temperature is None else request.temperature
        return Item(
            fbank=self.features(audio.samples),
            wants=request.outputs,
            prompt_ids=prompt_ids,
            max_new_tokens=max_new,
            temperature=temperature,
            seed=request_seed(request.id),
        )

    def run_batch(self, items: list[Item]) -> list[dict[str, np.ndarray]]:
        fbank = torch.from_numpy(np.stack([item.fbank for item in items]))
        encoded = self.model.encode(fbank)
        scores = torch.sigmoid(encoded.logits.float()).cpu().numpy()
        pooled = encoded.pooled.float().cpu().numpy()
        results: list[dict[str, np.ndarray]] = []
        for row, item in enumerate(items):
            result: dict[str, np.ndarray] = {}
            if EMBEDDING in item.wants:
                result[EMBEDDING] = pooled[row : row + 1].astype(np.float32)
            if LABELS in item.wants or SCORES in item.wants:
                result.update(top_k(scores[row], self.config.labels, self.settings.top_k))
            results.append(result)
        talking = [row for row, item in enumerate(items) if item.prompt_ids is not None]
        if talking:
            texts = self._answer([items[r] for r in talking], encoded.patches[talking])
            for row, text in zip(talking, texts, strict=True):
                results[row][TEXT] = np.array([text.encode()], dtype=object)
        return results

    def _answer(self, items: list[Item], patches: torch.Tensor) -> list[str]:
        audio = self.model.audio_prefix(patches)
        requests = []
        for row, item in enumerate(items):
            assert item.prompt_ids is not None
            text = self.model.embed_tokens(item.prompt_ids)
            prefix = torch.cat([audio[row], text], dim=0)
            requests.append(Decoding(prefix, item.max_new_tokens, item.temperature, item.seed))
        tokens = self.model.generate(
            requests, self.eos_id, self.suppress, self.settings.generation.min_new_tokens
        )
        decode = self.tokenizer.decode
        return [str(decode(t, skip_special_tokens=True)).strip() for t in tokens]
