"""Quality measures per clip and per dataset: WER and CER (jiwer), label accuracy, macro-F1 and
mAP (scikit-learn), leave-one-out kNN accuracy of embeddings, and answer token-F1."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

import jiwer
import numpy as np
from sklearn.metrics import average_precision_score, f1_score

_NON_WORD = re.compile(r"[^\w\s']|_")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """The documented text normalisation (docs/datasets.md): Unicode NFKC, lower case,
    punctuation except apostrophes removed, runs of whitespace collapsed to one space."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _NON_WORD.sub(" ", text)).strip()


@dataclass(frozen=True)
class EditCounts:
    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.errors / max(self.reference_length, 1)


def _counts(out: jiwer.WordOutput | jiwer.CharacterOutput, length: int) -> EditCounts:
    return EditCounts(out.substitutions, out.deletions, out.insertions, length)


def word_edits(reference: str, hypothesis: str | None) -> EditCounts:
    ref, hyp = normalise(reference), normalise(hypothesis or "")
    length = len(ref.split())
    if not ref:
        return EditCounts(0, 0, len(hyp.split()), 0)
    return _counts(jiwer.process_words(ref, hyp), length)


def char_edits(reference: str, hypothesis: str | None) -> EditCounts:
    ref, hyp = normalise(reference), normalise(hypothesis or "")
    if not ref:
        return EditCounts(0, 0, len(hyp), 0)
    return _counts(jiwer.process_characters(ref, hyp), len(ref))


def token_f1(reference: str, answer: str | None) -> float:
    """SQuAD-style F1 of the normalised answer's words against the reference's."""
    ref, hyp = normalise(reference).split(), normalise(answer or "").split()
    if not ref or not hyp:
        return float(ref == hyp)
    overlap = sum((Counter(ref) & Counter(hyp)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(hyp), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def macro_f1(truth: list[str], predicted: list[str], classes: list[str]) -> float:
    return float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0))


def mean_average_precision(
    truth: list[tuple[str, ...]], scores: list[dict[str, float]], classes: list[str]
) -> float:
    """Macro mAP over the classes that have at least one positive clip; a class a model did not
    score for a clip counts as score 0 there."""
    y_true = np.array([[c in labels for c in classes] for labels in truth], dtype=np.int64)
    y_score = np.array([[s.get(c, 0.0) for c in classes] for s in scores], dtype=np.float64)
    present = y_true.sum(axis=0) > 0
    if not present.any():
        return float("nan")
    return float(average_precision_score(y_true[:, present], y_score[:, present], average="macro"))


def knn_predictions(embeddings: np.ndarray, labels: list[str], k: int = 5) -> list[str]:
    """Leave-one-out k-nearest-neighbour labels by cosine similarity, votes weighted by
    similarity (so ties go to the closer neighbours)."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    k = max(1, min(k, len(labels) - 1))
    predictions = []
    for row in sim:
        nearest = np.argsort(-row, kind="stable")[:k]
        votes: dict[str, float] = {}
        for j in nearest:
            # Shifted so that every weight is positive: cosine is in [-1, 1].
            votes[labels[j]] = votes.get(labels[j], 0.0) + float(row[j]) + 1.0
        predictions.append(max(votes, key=lambda label: votes[label]))
    return predictions
