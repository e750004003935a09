"""CTC greedy decoding: best class per frame, merge repeats, drop blanks."""

from __future__ import annotations

import re

import numpy as np

_SPECIAL = re.compile(r"^<[^>]*>$")
_SPACES = re.compile(r"\s+")


def greedy_decode(logits: np.ndarray, vocab: list[str], blank_id: int, delimiter: str) -> str:
    """`logits` is [frames, vocab] over the valid frames only."""
    if logits.shape[0] == 0:
        return ""
    best = logits.argmax(axis=-1)
    keep = np.ones_like(best, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    tokens = [vocab[i] for i in best[keep] if i != blank_id]
    text = "".join(" " if t == delimiter else t for t in tokens if not _SPECIAL.match(t))
    return _SPACES.sub(" ", text).strip()
