"""Per-model columns over the evaluated clips, aligned by clip, and the dataset-level metrics
computed from any subset of them (the bootstrap resamples clip indices)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluation.manifest import Clip
from evaluation.measures import (
    char_edits,
    knn_predictions,
    macro_f1,
    mean_average_precision,
    token_f1,
    word_edits,
)
from evaluation.store import SampleResult

HIGHER_IS_BETTER = frozenset({"accuracy", "macro_f1", "map", "knn_accuracy", "token_f1"})
LATENCY_QUANTILES = {"latency_p50_ms": 50.0, "latency_p95_ms": 95.0, "latency_p99_ms": 99.0}
TASK_METRICS = {
    "transcribe": ("wer", "cer", "accuracy"),
    "tag": ("accuracy", "macro_f1", "map"),
    "embed": ("knn_accuracy",),
    "describe": ("token_f1",),
}


def evaluable(clip: Clip, task: str) -> bool:
    """Whether the clip has the ground truth that `task` is scored against."""
    if task == "transcribe":
        return clip.transcript is not None
    if task == "describe":
        return clip.reference is not None
    return bool(clip.labels)


@dataclass
class Columns:
    """One model's results on the evaluated clips, in clip order. A failed call scores as a
    wrong answer (empty text, no label), so errors cost quality as well as being counted."""

    task: str
    truth: list[str]
    """Each clip's first label ("" when it has none)."""
    label_sets: list[tuple[str, ...]]
    status: list[str]
    latency_ms: np.ndarray
    """NaN where the call failed."""
    queue_ms: np.ndarray
    compute_ms: np.ndarray
    correct: np.ndarray
    predicted: list[str] = field(default_factory=list)
    word_errors: np.ndarray = field(default_factory=lambda: np.zeros(0))
    word_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    char_errors: np.ndarray = field(default_factory=lambda: np.zeros(0))
    char_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    edit_kinds: dict[str, int] = field(default_factory=dict)
    f1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scores: list[dict[str, float]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    @property
    def per_clip_error(self) -> np.ndarray:
        """The per-clip quantity compared by the paired tests (lower is better)."""
        if self.task == "transcribe":
            error: np.ndarray = self.word_errors / np.maximum(self.word_counts, 1)
        elif self.task == "describe":
            error = 1 - self.f1
        else:
            error = 1 - self.correct.astype(np.float64)
        return error

    def metric(self, name: str, idx: np.ndarray) -> float:
        if name in LATENCY_QUANTILES:
            values = self.latency_ms[idx]
            if np.isnan(values).all():
                return float("nan")
            return float(np.nanpercentile(values, LATENCY_QUANTILES[name]))
        if name == "wer":
            return float(self.word_errors[idx].sum() / max(self.word_counts[idx].sum(), 1))
        if name == "cer":
            return float(self.char_errors[idx].sum() / max(self.char_counts[idx].sum(), 1))
        if name in ("accuracy", "knn_accuracy"):
            return float(self.correct[idx].mean())
        if name == "macro_f1":
            return macro_f1(
                [self.truth[i] for i in idx], [self.predicted[i] for i in idx], self.classes
            )
        if name == "map":
            return mean_average_precision(
                [self.label_sets[i] for i in idx], [self.scores[i] for i in idx], self.classes
            )
        if name == "token_f1":
            return float(self.f1[idx].mean())
        raise KeyError(name)

    def available(self) -> tuple[str, ...]:
        return TASK_METRICS[self.task] + tuple(LATENCY_QUANTILES)


def build_columns(
    task: str, clips: Sequence[Clip], results: dict[str, SampleResult], k: int = 5
) -> Columns:
    """`results` maps clip id to this model's result; every clip must have one."""
    rows = [results[c.id] for c in clips]
    classes = sorted({label for c in clips for label in c.labels})
    cols = Columns(
        task=task,
        truth=[c.labels[0] if c.labels else "" for c in clips],
        label_sets=[c.labels for c in clips],
        status=[r.status for r in rows],
        latency_ms=np.array([r.latency_ms if r.ok else np.nan for r in rows]),
        queue_ms=np.array([r.queue_ms if r.ok else np.nan for r in rows]),
        compute_ms=np.array([r.compute_ms if r.ok else np.nan for r in rows]),
        correct=np.zeros(len(rows), dtype=bool),
        classes=classes,
    )
    if task == "transcribe":
        words = [
            word_edits(c.transcript or "", r.text if r.ok else "")
            for c, r in zip(clips, rows, strict=True)
        ]
        chars = [
            char_edits(c.transcript or "", r.text if r.ok else "")
            for c, r in zip(clips, rows, strict=True)
        ]
        cols.word_errors = np.array([w.errors for w in words], dtype=np.float64)
        cols.word_counts = np.array([w.reference_length for w in words], dtype=np.float64)
        cols.char_errors = np.array([c.errors for c in chars], dtype=np.float64)
        cols.char_counts = np.array([c.reference_length for c in chars], dtype=np.float64)
        cols.correct = cols.word_errors == 0
        cols.edit_kinds = {
            "substitutions": sum(w.substitutions for w in words),
            "deletions": sum(w.deletions for w in words),
            "insertions": sum(w.insertions for w in words),
        }
    elif task == "describe":
        cols.f1 = np.array(
            [
                token_f1(c.reference or "", r.text if r.ok else "")
                for c, r in zip(clips, rows, strict=True)
            ]
        )
        cols.correct = cols.f1 >= 0.5
    elif task == "tag":
        cols.predicted = [r.labels[0] if r.ok and r.labels else "" for r in rows]
        cols.correct = np.array([p in c.labels for p, c in zip(cols.predicted, clips, strict=True)])
        cols.scores = [dict(zip(r.labels, r.scores, strict=True)) if r.ok else {} for r in rows]
    else:
        ok = [i for i, r in enumerate(rows) if r.ok and r.embedding is not None]
        cols.predicted = [""] * len(rows)
        if len(ok) >= 2:
            emb = np.stack([np.asarray(rows[i].embedding) for i in ok])
            for i, label in zip(
                ok, knn_predictions(emb, [cols.truth[i] for i in ok], k), strict=True
            ):
                cols.predicted[i] = label
        cols.correct = np.array(
            [p != "" and p == t for p, t in zip(cols.predicted, cols.truth, strict=True)]
        )
    return cols
