"""GAMA's decoding through transformers' `generate`, with per-request sampling state.

The release samples with `GenerationConfig(do_sample=True, temperature=0.1, top_p=0.95,
top_k=500, repetition_penalty=1.1, max_new_tokens=400)`. One `generate` call serves a whole
batch, yet each request has its own temperature, token limit and seed, and its tokens must not
depend on what else shares the batch. So `generate` runs greedy over our `SeededSampler`, the
only logits processor: to each row's own tokens (its left padding left out) it applies
transformers' repetition penalty and the release's warpers (temperature, top-k, top-p, in
transformers' order), draws the row's token from the row's own generator and returns a
one-hot row, which greedy selection then takes. Caching, padding and end of sequence stay
transformers' own. This is the static path (`tag`, and `describe` without continuous
batching); `decode_batch.py` steps the same `RowSampler`s one token at a time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class Sampling:
    """One request's decoding: temperature 0 is greedy."""

    max_new_tokens: int
    temperature: float
    seed: int


@dataclass(frozen=True)
class Prompted:
    """One sequence to continue: the audio prefix, then the prompt's token ids (with `<s>`)."""

    prefix: torch.Tensor
    ids: list[int]
    sampling: Sampling


def request_seed(request_id: str) -> int:
    """Sampling is reproducible per request id: a retry gets the same answer."""
    return zlib.crc32(request_id.encode())


@dataclass(frozen=True)
class DecodeSettings:
    top_k: int
    top_p: float
    repetition_penalty: float
    eos_id: int
    pad_id: int


class Warpers:
    """transformers' repetition penalty and the release's warpers, built once per model."""

    def __init__(self, settings: DecodeSettings) -> None:
        top_k, top_p, penalty = settings.top_k, settings.top_p, settings.repetition_penalty
        self.penalty = RepetitionPenaltyLogitsProcessor(penalty) if penalty != 1.0 else None
        self.top_k = TopKLogitsWarper(top_k) if top_k > 0 else None
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None


class RowSampler:
    """One sequence's decoding state: its sampling settings and its own generator, so its
    tokens do not depend on what else shares a batch or a step."""

    def __init__(self, sampling: Sampling, warpers: Warpers, device: torch.device) -> None:
        self.sampling = sampling
        self.warpers = warpers
        self.generator: torch.Generator | None = None
        if sampling.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(sampling.seed)

    def pick(self, ids: torch.Tensor, logits: torch.Tensor) -> int:
        """The next token after `ids` ([1, n]: the prompt's text and the answer so far),
        from this row's logits ([1, vocab])."""
        w = self.warpers
        logits = logits.float()
        if w.penalty is not None:
            logits = w.penalty(ids, logits)
        if self.generator is None:
            return int(logits.argmax(dim=-1)[0])
        logits = logits / self.sampling.temperature
        if w.top_k is not None:
            logits = w.top_k(ids, logits)
        if w.top_p is not None:
            logits = w.top_p(ids, logits)
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs[0], 1, generator=self.generator)[0])


def pick_rows(
    samplers: list[RowSampler], ids: list[torch.Tensor], logits: torch.Tensor
) -> list[int]:
    """`RowSampler.pick` for rows decoded together, the penalty and warpers applied to all
    rows at once (one kernel each rather than one per row, which is what a GPU needs); only
    the draw stays per row, from each row's own generator."""
    w = samplers[0].warpers
    logits = logits.float()
    if w.penalty is not None:
        # Rows' token lists padded with their own last token: a repeat is penalised once.
        width = max(t.shape[1] for t in ids)
        padded = torch.cat(
            [torch.cat([t, t[:, -1:].expand(1, width - t.shape[1])], 1) for t in ids]
        )
        logits = w.penalty(padded, logits)
    picked = [0] * len(samplers)
    greedy = [i for i, s in enumerate(samplers) if s.generator is None]
    drawn = [i for i, s in enumerate(samplers) if s.generator is not None]
    if greedy:
        for i, token in zip(greedy, logits[greedy].argmax(dim=-1).tolist(), strict=True):
            picked[i] = int(token)
    if drawn:
        temperatures = torch.tensor(
            [samplers[i].sampling.temperature for i in drawn], device=logits.device
        )
        warped = logits[drawn] / temperatures.unsqueeze(1)
        if w.top_k is not None:
            warped = w.top_k(None, warped)
        if w.top_p is not None:
            warped = w.top_p(None, warped)
        probs = torch.softmax(warped, dim=-1)
        for row, i in enumerate(drawn):
            draw = torch.multinomial(probs[row], 1, generator=samplers[i].generator)
            picked[i] = int(draw[0])
    return picked


class SeededSampler(LogitsProcessor):  # type: ignore[misc]
    def __init__(
        self,
        rows: list[Sampling],
        pads: list[int],
        settings: DecodeSettings,
        device: torch.device,
    ) -> None:
        warpers = Warpers(settings)
        self.samplers = [RowSampler(row, warpers, device) for row in rows]
        self.pads = pads

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        picked = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        for row, sampler in enumerate(self.samplers):
            ids = input_ids[row : row + 1, self.pads[row] :]
            picked[row] = sampler.pick(ids, scores[row : row + 1])
        one_hot = torch.full_like(scores, -float("inf"))
        one_hot.scatter_(1, picked.unsqueeze(1), 0.0)
        return one_hot  # type: ignore[return-value]


class RowLimits(StoppingCriteria):  # type: ignore[misc]
    """Each row stops at its own token limit; `generate` pads the rows that are done."""

    def __init__(self, limits: list[int], prompt_length: int) -> None:
        self.limits = torch.tensor(limits)
        self.prompt_length = prompt_length

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.BoolTensor:
        made = input_ids.shape[1] - self.prompt_length
        done = self.limits.to(input_ids.device) <= made
        return done  # type: ignore[return-value]


@dataclass(frozen=True)
class Packed:
    """Sequences left-padded into one batch: the audio prefix and the prompt's embeddings,
    their attention mask, and the prompt's token ids (left-padded with `pad_id`)."""

    embeds: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor
    pads: list[int]
    """Padding before each row's text ids."""


def pack(lm: PreTrainedModel, batch: list[Prompted], pad_id: int) -> Packed:
    device = lm.device
    embed = lm.get_input_embeddings()
    width = max(p.prefix.shape[0] + len(p.ids) for p in batch)
    text_width = max(len(p.ids) for p in batch)
    hidden = batch[0].prefix.shape[1]
    embeds = torch.zeros(len(batch), width, hidden, device=device, dtype=lm.dtype)
    mask = torch.zeros(len(batch), width, dtype=torch.long, device=device)
    ids = torch.full((len(batch), text_width), pad_id, dtype=torch.long, device=device)
    for row, p in enumerate(batch):
        tokens = torch.tensor(p.ids, dtype=torch.long, device=device)
        sequence = torch.cat([p.prefix.to(device, lm.dtype), embed(tokens)], dim=0)
        embeds[row, width - sequence.shape[0] :] = sequence
        mask[row, width - sequence.shape[0] :] = 1
        ids[row, text_width - len(p.ids) :] = tokens
    return Packed(embeds, mask, ids, [text_width - len(p.ids) for p in batch])


def generate(
    lm: PreTrainedModel, batch: list[Prompted], settings: DecodeSettings
) -> list[list[int]]:
    """New token ids per sequence (without the end-of-sequence token)."""
    packed = pack(lm, batch, settings.pad_id)
    text_width = packed.ids.shape[1]
    rows = [p.sampling for p in batch]
    limits = [r.max_new_tokens for r in rows]
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max(r.max_new_tokens for r in rows),
        eos_token_id=settings.eos_id,
        pad_token_id=settings.pad_id,
    )
    out = lm.generate(
        input_ids=packed.ids,
        inputs_embeds=packed.embeds,
        attention_mask=packed.mask,
        generation_config=config,
        logits_processor=LogitsProcessorList(
            [SeededSampler(rows, packed.pads, settings, lm.device)]
        ),
        stopping_criteria=StoppingCriteriaList([RowLimits(limits, text_width)]),
    )
    answers: list[list[int]] = []
    for row, sampling in enumerate(rows):
        new = out[row, text_width:].tolist()[: sampling.max_new_tokens]
        if settings.eos_id in new:
            new = new[: new.index(settings.eos_id)]
        answers.append([int(t) for t in new])
    return answers
