"""GAMA family: the release's front end, one audio pass per batch, answers where asked.

- `describe`: GAMA's answer to the request's prompt in the release's `alpaca_short` template,
  decoded with the release's sampling (or the request's temperature), seeded by request id.
- `embed`: the mean of the 64 aggregated audio tokens (the aggregator's output, before the
  projection into the LLM), GAMA's own summary of the clip.
- `tag` (when model.yaml lists labels): labels named in GAMA's greedy answer to
  `gama.tag_prompt`, matched by `tags.match_labels`; the scores say how each matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelserver.audio import Audio
from modelserver.config import GamaSettings, ModelConfig, Task
from modelserver.errors import invalid
from modelserver.families.base import Family
from modelserver.families.gama.decode_batch import DecodeBatch
from modelserver.families.gama.fbank import GamaFrontEnd
from modelserver.families.gama.generation import (
    DecodeSettings,
    Prompted,
    Sampling,
    generate,
    request_seed,
)
from modelserver.families.gama.model import GamaModel
from modelserver.families.gama.tags import match_labels
from modelserver.generation.pieces import TextPieces
from modelserver.generation.scheduler import GenerationRequest, Prefilled
from modelserver.messages import EMBEDDING, LABELS, SCORES, TEXT, InferRequest
from modelserver.runtime import Placement, torch_runtime


@dataclass(frozen=True)
class Item:
    fbank: np.ndarray
    task: Task
    wants: frozenset[str]
    prompt_ids: list[int] | None
    sampling: Sampling


class GamaFamily(Family):
    def __init__(self, config: ModelConfig, model: GamaModel, placement: Placement) -> None:
        assert config.gama is not None
        self.config = config
        self.settings: GamaSettings = config.gama
        self.model = model
        self.tokenizer: Any = model.tokenizer
        self.placement = placement
        s = self.settings
        self.front_end = GamaFrontEnd(
            config.sample_rate, s.num_mel_bins, s.max_frames, s.fbank_mean, s.fbank_std
        )
        gen = s.generation
        pad = self.tokenizer.pad_token_id
        self.decode = DecodeSettings(
            top_k=gen.top_k,
            top_p=gen.top_p,
            repetition_penalty=gen.repetition_penalty,
            eos_id=int(self.tokenizer.eos_token_id),
            # The release sets pad to 0 (<unk>); padding never reaches the answer.
            pad_id=int(pad if pad is not None else 0),
        )

    @classmethod
    def load(cls, model_dir: Path, config: ModelConfig, device: str) -> GamaFamily:
        assert config.gama is not None
        # `config.dtype` is the planned one for this device (modelserver/plan.py); `auto` only
        # when loaded without a plan (tests), which means bfloat16 on CUDA, float32 on a CPU.
        planned = None if config.dtype == "auto" else getattr(torch, config.dtype)
        dev, dtype, placement = torch_runtime.select_device(
            device,
            cuda_dtype=planned or torch.bfloat16,
            threads=config.intra_op_threads,
            cpu_dtype=planned or torch.float32,
        )
        model = GamaModel.load(model_dir, config.gama, dev, dtype)
        return cls(config, model, placement)

    @property
    def embedding_size(self) -> int:
        return int(self.model.audio.dims.aggregator.width)

    def prompt_ids(self, instruction: str) -> list[int]:
        """`<s>` then the template, as the release's `tokenizer(prompt)` gives them."""
        text = self.settings.prompt_template.format(instruction=instruction)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(self.tokenizer.bos_token_id), *ids]

    def prepare(self, request: InferRequest, audio: Audio) -> Item:
        self._check_outputs(request)
        gen = self.settings.generation
        seed = request_seed(request.id)
        prompt_ids = None
        sampling = Sampling(gen.max_new_tokens, gen.temperature, seed)
        if request.task is Task.DESCRIBE:
            if not request.prompt or not request.prompt.strip():
                raise invalid(f"task {Task.DESCRIBE.value} needs a non-empty PROMPT input")
            prompt_ids = self.prompt_ids(request.prompt)
            temperature = gen.temperature if request.temperature is None else request.temperature
            limit = min(request.max_new_tokens or gen.max_new_tokens, gen.max_new_tokens)
            sampling = Sampling(limit, temperature, seed)
        elif request.task is Task.TAG:
            prompt_ids = self.prompt_ids(self.settings.tag_prompt)
            tag_max = self.settings.tag_max_new_tokens
            sampling = Sampling(min(request.max_new_tokens or tag_max, tag_max), 0.0, seed)
        return Item(
            fbank=self.front_end(audio.samples),
            task=request.task,
            wants=request.outputs,
            prompt_ids=prompt_ids,
            sampling=sampling,
        )

    @staticmethod
    def _check_outputs(request: InferRequest) -> None:
        # Each text output costs a generation, so a request gets the ones its task makes.
        if request.task is not Task.TAG and request.outputs & {LABELS, SCORES}:
            raise invalid("LABELS and SCORES come from task tag (GAMA's answer to its tag prompt)")
        if request.task is not Task.DESCRIBE and TEXT in request.outputs:
            raise invalid("TEXT comes from task describe (GAMA's answer to your PROMPT)")

    def engine(self) -> GamaEngine:
        return GamaEngine(self.model, self.decode)

    def generation(self, item: Item) -> GenerationRequest | None:
        if item.task is not Task.DESCRIBE:
            return None
        prompt = item.prompt_ids or []
        return GenerationRequest(
            item=item,
            input_tokens=self.model.audio.dims.prefix_tokens + len(prompt),
            max_new_tokens=item.sampling.max_new_tokens,
            detokenizer=partial(TextPieces, self.tokenizer),
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of every layer for one position."""
        c = self.model.lm.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        itemsize = torch.empty((), dtype=self.model.dtype).element_size()
        return int(2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * itemsize)

    def run_batch(self, items: list[Item]) -> list[dict[str, np.ndarray]]:
        fbank = torch.from_numpy(np.stack([item.fbank for item in items]))
        tokens = self.model.encode(fbank)
        embeddings = pooled(tokens.aggregated)
        results: list[dict[str, np.ndarray]] = []
        for row, item in enumerate(items):
            result: dict[str, np.ndarray] = {}
            if EMBEDDING in item.wants:
                result[EMBEDDING] = embeddings[row : row + 1]
            results.append(result)
        talking = [row for row, item in enumerate(items) if item.prompt_ids is not None]
        if talking:
            batch = [
                Prompted(tokens.prefix[row], items[row].prompt_ids or [], items[row].sampling)
                for row in talking
            ]
            with torch.inference_mode():
                answers = generate(self.model.lm, batch, self.decode)
            for row, ids in zip(talking, answers, strict=True):
                text = str(self.tokenizer.decode(ids, skip_special_tokens=True)).strip()
                results[row].update(self._outputs(items[row], text))
        return results

    def _outputs(self, item: Item, text: str) -> dict[str, np.ndarray]:
        if item.task is not Task.TAG:
            return {TEXT: np.array([text.encode()], dtype=object)}
        matched = match_labels(text, self.config.labels)
        return {
            LABELS: np.array([label.encode() for label, _ in matched], dtype=object),
            SCORES: np.array([score for _, score in matched], dtype=np.float32),
        }


def pooled(aggregated: torch.Tensor) -> np.ndarray:
    """`embed`: the mean over time of the aggregated audio tokens, [B, D]."""
    return aggregated.mean(dim=1).float().cpu().numpy().astype(np.float32)


class GamaEngine:
    """The audio path, then GAMA's running decode batch (`decode_batch.py`)."""

    def __init__(self, model: GamaModel, decode: DecodeSettings) -> None:
        self.model = model
        self.eos_id = decode.eos_id
        self.batch = DecodeBatch(model.lm, decode)

    @torch.inference_mode()
    def prefill(self, items: list[Item]) -> list[Prefilled]:
        fbank = torch.from_numpy(np.stack([item.fbank for item in items]))
        tokens = self.model.encode(fbank)
        firsts = self.batch.prefill(
            [
                Prompted(tokens.prefix[row], item.prompt_ids or [], item.sampling)
                for row, item in enumerate(items)
            ]
        )
        return [
            Prefilled(
                first,
                {EMBEDDING: pooled(tokens.aggregated[row : row + 1])}
                if EMBEDDING in item.wants
                else {},
            )
            for row, (item, first) in enumerate(zip(items, firsts, strict=True))
        ]

    @torch.inference_mode()
    def step(self) -> list[int]:
        return self.batch.step()

    @torch.inference_mode()
    def keep(self, indices: list[int]) -> None:
        self.batch.keep(indices)
