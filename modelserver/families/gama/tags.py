"""`tag` for GAMA, which has no tagging head: labels are read from its answer to a fixed
classification prompt (gama.tag_prompt), matched against the model's label list."""

from __future__ import annotations

import re

EXACT = 1.0
"""The answer names the label itself (any case; a plural 's' or 'es' allowed)."""
ALL_WORDS = 0.5
"""The answer holds every word of a multi-word label, not as one phrase."""


def _phrase(words: list[str]) -> re.Pattern[str]:
    body = r"\W+".join(re.escape(w) for w in words)
    return re.compile(rf"\b{body}(?:e?s)?\b", re.IGNORECASE)


def match_labels(answer: str, labels: list[str]) -> list[tuple[str, float]]:
    """(label, score) for each label the answer names: exact phrases first, then in the order
    the answer mentions them."""
    found: list[tuple[float, int, str]] = []
    words_in_answer = {w.lower() for w in re.findall(r"\w+", answer)}
    for label in labels:
        words = re.findall(r"\w+", label)
        if not words:
            continue
        hit = _phrase(words).search(answer)
        if hit:
            found.append((EXACT, hit.start(), label))
        elif len(words) > 1 and all(w.lower() in words_in_answer for w in words):
            first = min(answer.lower().find(w.lower()) for w in words)
            found.append((ALL_WORDS, first, label))
    found.sort(key=lambda f: (-f[0], f[1]))
    return [(label, score) for score, _, label in found]
