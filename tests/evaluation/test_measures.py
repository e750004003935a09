"""Quality measures and criteria against independent computations."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from evaluation.analysis import check_criterion, recommend
from evaluation.columns import Columns
from evaluation.criteria import OfflineCriterion
from evaluation.measures import (
    knn_predictions,
    mean_average_precision,
    normalise,
    token_f1,
    word_edits,
)


def test_normalisation_is_documented_behaviour() -> None:
    assert normalise("  Hello,   WORLD!  It's fine. ") == "hello world it's fine"
    assert normalise("ﬁne") == "fine"  # NFKC folds the ligature


def test_word_edits_match_jiwer_on_normalised_text() -> None:
    ref, hyp = "The cat sat on the mat.", "the bat sat on mat please"
    counts = word_edits(ref, hyp)
    assert counts.rate == pytest.approx(jiwer.wer(normalise(ref), normalise(hyp)))
    assert counts.errors == 3 and counts.reference_length == 6
    assert word_edits("hello there", None).deletions == 2


def test_token_f1() -> None:
    assert token_f1("a steady pure tone", "a pure tone") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert token_f1("a steady pure tone", "noise") == 0.0
    assert token_f1("a steady pure tone", None) == 0.0


def test_knn_leave_one_out_finds_clusters_and_never_uses_the_clip_itself() -> None:
    rng = np.random.default_rng(0)
    centres = {"a": np.array([1.0, 0, 0]), "b": np.array([0, 1.0, 0])}
    labels = ["a"] * 6 + ["b"] * 6
    emb = np.stack([centres[label] + rng.normal(0, 0.05, 3) for label in labels])
    assert knn_predictions(emb, labels, k=3) == labels
    # A lone clip of its own class can only be predicted from the others.
    assert knn_predictions(np.vstack([emb, [0, 0, 1.0]]), [*labels, "c"], k=3)[-1] != "c"


def test_map_matches_sklearn_and_treats_unscored_classes_as_zero() -> None:
    truth = [("a",), ("b",), ("a", "b"), ("c",)]
    scores = [{"a": 0.9, "b": 0.2}, {"b": 0.7}, {"a": 0.4, "b": 0.5}, {"a": 0.3}]
    classes = ["a", "b", "c"]
    y_true = np.array([[c in t for c in classes] for t in truth])
    y_score = np.array([[s.get(c, 0.0) for c in classes] for s in scores])
    expected = average_precision_score(y_true, y_score, average="macro")
    assert mean_average_precision(truth, scores, classes) == pytest.approx(expected)


def _columns(correct: np.ndarray, latency: np.ndarray) -> Columns:
    n = len(correct)
    return Columns(
        task="tag",
        truth=["x"] * n,
        label_sets=[("x",)] * n,
        status=["OK"] * n,
        latency_ms=latency,
        queue_ms=np.zeros(n),
        compute_ms=latency,
        correct=correct,
    )


def test_criteria_met_violated_and_inconclusive() -> None:
    rng = np.random.default_rng(1)
    n = 400
    base = _columns(rng.random(n) < 0.8, rng.normal(10, 1, n))
    same = _columns(base.correct.copy(), base.latency_ms * 1.01)
    worse = _columns(rng.random(n) < 0.5, base.latency_ms * 3)
    accuracy = OfflineCriterion(metric="accuracy", max_absolute_worsening=0.01)
    latency = OfflineCriterion(metric="latency_p95_ms", max_relative_worsening=0.5)
    met = check_criterion(accuracy, same, base, 0.05) + check_criterion(latency, same, base, 0.05)
    assert [r["status"] for r in met] == ["met", "met"]
    assert recommend("c", "b", met, 0.05)["verdict"] == "ADOPT"
    bad = check_criterion(accuracy, worse, base, 0.05) + check_criterion(latency, worse, base, 0.05)
    assert [r["status"] for r in bad] == ["violated", "violated"]
    assert recommend("c", "b", bad, 0.05)["verdict"] == "KEEP_BASELINE"
    # Few clips and a small true difference: the interval straddles the bound.
    small_base = _columns(np.array([True, False] * 10), np.full(20, 10.0))
    small = _columns(np.array([True, False, False, True] * 5), np.full(20, 10.0))
    open_ = check_criterion(accuracy, small, small_base, 0.05)
    assert open_[0]["status"] == "inconclusive"
    assert recommend("c", "b", open_, 0.05)["verdict"] == "INCONCLUSIVE"
    wer = OfflineCriterion(metric="wer", max_absolute_worsening=0.01)
    assert check_criterion(wer, same, base, 0.05) == [{"metric": "wer", "status": "not_applicable"}]
