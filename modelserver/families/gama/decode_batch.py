"""GAMA's running decode batch: one transformers `DynamicCache` whose rows join after their
prefill and leave the step they finish (iteration-level scheduling, as in Orca and vLLM).

transformers' own continuous-batching manager (`generate_batch`, `init_continuous_batching`)
takes prompts as token ids only; GAMA's prompt starts with 96 audio embeddings, so the batch is
kept here, over the cache classes `generate` itself uses. Rows are left-padded and aligned on
the right, as `generate` pads a batch: each step feeds every row's last token at its own
position, and the attention mask hides each row's padding. Joining pads the shorter side on
the left; leaving drops the row and any leading columns no remaining row uses, so the cache is
never wider than its longest live row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from modelserver.families.gama.generation import (
    DecodeSettings,
    Prompted,
    RowSampler,
    Warpers,
    pack,
    pick_rows,
)


@dataclass
class _Row:
    sampler: RowSampler
    ids: torch.Tensor
    """[1, n]: the prompt's text ids, then the answer so far (what the penalty sees)."""
    length: int
    """Real (unpadded) positions in the cache."""
    last: int
    """The token the next step feeds."""


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class DecodeBatch:
    """Runs on the inference thread only."""

    def __init__(self, lm: PreTrainedModel, settings: DecodeSettings) -> None:
        self.lm = lm
        self.settings = settings
        self.warpers = Warpers(settings)
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None

    @property
    def width(self) -> int:
        """Cache positions per row, padding included."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def prefill(self, batch: list[Prompted]) -> list[int]:
        """Prompts `batch`, appends its rows, returns each one's first token."""
        device = self.lm.device
        packed = pack(self.lm, batch, self.settings.pad_id)
        positions = packed.mask.cumsum(-1) - 1
        positions.masked_fill_(packed.mask == 0, 1)
        out = self.lm(
            inputs_embeds=packed.embeds,
            attention_mask=packed.mask,
            position_ids=positions,
            past_key_values=DynamicCache(config=self.lm.config),
            use_cache=True,
            logits_to_keep=1,
        )
        samplers = [RowSampler(p.sampling, self.warpers, device) for p in batch]
        ids = [packed.ids[i : i + 1, packed.pads[i] :] for i in range(len(batch))]
        tokens = pick_rows(samplers, ids, out.logits[:, -1])
        rows = [
            _Row(sampler, self._append(row_ids, token), int(packed.mask[i].sum()), token)
            for i, (sampler, row_ids, token) in enumerate(zip(samplers, ids, tokens, strict=True))
        ]
        self._join(out.past_key_values, packed.mask, rows)
        return [row.last for row in rows]

    def step(self) -> list[int]:
        """One token for every row."""
        assert self.cache is not None and self.mask is not None
        device = self.lm.device
        tokens = torch.tensor([[r.last] for r in self.rows], dtype=torch.long, device=device)
        positions = torch.tensor([[r.length] for r in self.rows], dtype=torch.long, device=device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        out = self.lm(
            input_ids=tokens,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        picked = pick_rows(
            [r.sampler for r in self.rows], [r.ids for r in self.rows], out.logits[:, -1]
        )
        for row, token in zip(self.rows, picked, strict=True):
            row.ids = self._append(row.ids, token)
            row.length += 1
            row.last = token
        return picked

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, in this order."""
        if indices == list(range(len(self.rows))):
            return
        if not indices:
            self.rows, self.cache, self.mask = [], None, None
            return
        assert self.cache is not None and self.mask is not None
        index = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[i] for i in indices]
        mask = self.mask[index]
        # A longer row that left leaves padding columns no remaining row uses.
        start = int((mask.sum(dim=0) > 0).nonzero()[0])
        self.mask = mask[:, start:]
        self.cache = DynamicCache(
            ddp_cache_data=[
                (layer.keys[index, :, start:], layer.values[index, :, start:])
                for layer in self.cache.layers
            ]
        )

    def _join(self, cache: DynamicCache, mask: torch.Tensor, rows: list[_Row]) -> None:
        if self.cache is None or self.mask is None:
            self.cache, self.mask, self.rows = cache, mask, rows
            return
        width = max(self.width, int(mask.shape[1]))
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
        self.cache = DynamicCache(
            ddp_cache_data=[
                (
                    torch.cat([_pad_left(old.keys, width, 2), _pad_left(new.keys, width, 2)]),
                    torch.cat([_pad_left(old.values, width, 2), _pad_left(new.values, width, 2)]),
                )
                for old, new in zip(self.cache.layers, cache.layers, strict=True)
            ]
        )
        self.rows += rows

    @staticmethod
    def _append(ids: torch.Tensor, token: int) -> torch.Tensor:
        return torch.cat([ids, ids.new_full((1, 1), token)], dim=1)
