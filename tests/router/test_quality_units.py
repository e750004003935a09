"""Validators and anomaly detection on plain outputs."""

from __future__ import annotations

import numpy as np
import pytest

from gamaserving.oip import ModelInfo, ModelOutput
from router.config import AnomalySettings, QualitySettings
from router.quality.tracker import AnomalyMonitor, QualityTracker
from router.quality.validators import validate

INFO = ModelInfo("m", "1", frozenset({"embed", "tag", "describe"}), 4, frozenset({"a", "b", "c"}))
S = QualitySettings(min_confidence=0.3, slo_ms=100)


def failed(task: str, out: ModelOutput, latency: float = 10) -> set[str]:
    return {c.name for c in validate(task, out, INFO, S, latency) if not c.passed}


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        ([0.1, 0.2, 0.3, 0.4], set()),
        ([0.1, np.nan, 0.3, 0.4], {"features.finite"}),
        ([0.1, 0.2, 0.3], {"features.dimension"}),
        ([0.0, 0.0, 0.0, 0.0], {"features.degenerate"}),
        ([2.0, 2.0, 2.0, 2.0], {"features.degenerate"}),
        ([1e6, 0.2, 0.3, 0.4], {"features.range"}),
    ],
)
def test_feature_checks(vector: list[float], expected: set[str]) -> None:
    assert failed("embed", ModelOutput(features=np.array(vector, np.float32))) == expected


def test_missing_features() -> None:
    assert failed("embed", ModelOutput()) == {"features.present"}


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        (["a", "b"], [0.9, 0.1], set()),
        (["a", "z"], [0.9, 0.1], {"patterns.known_labels"}),
        (["a", "b"], [1.2, 0.1], {"patterns.score_range", "patterns.confidence"}),
        (["a", "b"], [0.1, 0.9], {"patterns.ordering"}),
        (["a", "b"], [0.2, 0.1], {"patterns.confidence"}),
        ([], [], {"patterns.present"}),
    ],
)
def test_pattern_checks(labels: list[str], scores: list[float], expected: set[str]) -> None:
    assert failed("tag", ModelOutput(labels=labels, scores=scores)) == expected


def test_text_checks() -> None:
    assert failed("describe", ModelOutput(text="a dog barks")) == set()
    assert failed("describe", ModelOutput(text="  ")) == {"text.non_empty"}
    assert failed("describe", ModelOutput(text="bad \ufffd byte\x07")) == {"text.characters"}
    assert failed("transcribe", ModelOutput(text="")) == set()  # silence has no transcript
    assert failed("describe", ModelOutput(text="x" * 20_000)) == {"text.length"}


def test_response_time_slo() -> None:
    assert failed("describe", ModelOutput(text="ok"), latency=150) == {"response_time"}


def test_tracker_counts_per_model_and_check() -> None:
    tracker = QualityTracker(recent=2)
    for ok in (True, False, False):
        tracker.record(
            "m", [*validate("describe", ModelOutput(text="x" if ok else ""), INFO, S, 1)]
        )
    row = next(r for r in tracker.rows("m") if r[1] == "text.non_empty")
    assert row[2:] == (3, 2, pytest.approx(1 / 3), 0.0)


def test_ewma_flags_a_level_shift_and_keeps_flagging() -> None:
    monitor = AnomalyMonitor(AnomalySettings(alpha=0.05, threshold=4, warmup=30), clock=lambda: 1.0)
    rng = np.random.default_rng(0)
    for x in rng.normal(10, 1, 200):
        assert monitor.observe("m", "latency_ms", float(x)) is None or abs(x - 10) > 3.5
    before = len(monitor.anomalies)
    hits = [monitor.observe("m", "latency_ms", 30.0) for _ in range(5)]
    assert all(h is not None and h.zscore > 4 for h in hits)
    assert len(monitor.anomalies) == before + 5
