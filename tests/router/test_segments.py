"""Segments, in parts: the p-value corrections against statsmodels, the clip length against
soundfile, the dimension values (and the 64-character cut), the configuration's checks, and
the segment statistics in SQL (SQLite and PostgreSQL) against the same events summed in
Python, with the top-20 cap."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError
from statsmodels.stats.multitest import multipletests

from router.config import ExperimentSettings
from router.experiments.clip_length import clip_seconds, duration_bucket
from router.experiments.segments import (
    MAX_VALUE_LENGTH,
    RequestFacts,
    benjamini_hochberg,
    dimension_values,
    holm,
    judge_segments,
)
from router.results.query import segment_statistics
from router.results.store import Exposure, Outcome, ResultsStore
from tests.support.experiments import two_arms


@pytest.mark.parametrize("seed", range(5))
def test_corrections_equal_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = list(rng.uniform(0, 0.2, size=12) ** 2)
    p[3] = p[7]  # a tie
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-12)
    expected = list(multipletests(p, method="fdr_bh")[1])
    assert benjamini_hochberg(p) == pytest.approx(expected, abs=1e-12)
    assert holm([0.01]) == [0.01] and benjamini_hochberg([]) == []


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("OGG", "OPUS")],
)
def test_clip_length_from_headers_equals_soundfile(fmt: str, subtype: str) -> None:
    samples = np.random.default_rng(1).standard_normal(16_000 * 7 + 123).astype(np.float32) / 10
    out = io.BytesIO()
    sf.write(out, samples, 16_000, format=fmt, subtype=subtype)
    data = out.getvalue()
    info = sf.info(io.BytesIO(data))
    assert clip_seconds(data, None, 0) == pytest.approx(info.frames / info.samplerate, abs=1e-9)
    raw = samples.tobytes()
    assert clip_seconds(None, raw, 16_000) == pytest.approx(len(samples) / 16_000)
    assert clip_seconds(b"not audio at all", None, 0) is None
    assert clip_seconds(data[:20], None, 0) is None or fmt == "OGG"


def test_buckets_and_values() -> None:
    assert [duration_bucket(s) for s in (0.2, 5.0, 14.9, 29.0, 30.0, None)] == [
        "0-5s", "5-15s", "5-15s", "15-30s", "30s+", "unknown"
    ]  # fmt: skip
    long = "x" * 100
    facts = RequestFacts({"x-client": "web", "x-team": long}, 6.0, "v2")
    names = ["x-client", "x-team", "x-absent", "audio_duration", "model_version"]
    values, cut = dimension_values(names, facts)
    assert values == {"x-client": "web", "x-team": "x" * MAX_VALUE_LENGTH,
                      "audio_duration": "5-15s", "model_version": "v2"}  # fmt: skip
    assert cut == ["x-team"]


def test_dimensions_are_checked_with_the_field_named() -> None:
    ExperimentSettings(**two_arms(dimensions=["x-client", "audio_duration"]))
    bad_ones = [
        (["X-Client"], "dimensions.0"),
        (["x-key-bin"], "-bin"),
        (["a", "a"], "unique"),
        ([f"d{i}" for i in range(9)], "dimensions"),
    ]
    for bad, needle in bad_ones:
        with pytest.raises(ValidationError, match=needle):
            ExperimentSettings(**two_arms(dimensions=bad))


def _events(rng: random.Random, seed: str) -> tuple[list[Exposure], list[Outcome]]:
    """Users with requests in several clients each (a user's requests may span segments):
    two large clients, 30 rare ones, and requests with no client."""
    clients = ["web"] * 8 + ["ios"] * 5 + [f"rare-{i}" for i in range(30)] + [None] * 3
    rows, reports = [], []
    for i in range(1500):
        user = f"u{rng.randrange(300)}"
        arm = "control" if int(user[1:]) % 2 else "candidate"
        client = rng.choice(clients)
        rid = f"{seed}-r{i}"
        dims = {} if client is None else {"x-client": client}
        rows.append(Exposure(rid, "ab", seed, arm, "m", user, float(i), rng.uniform(5, 50),
                             rng.random() < 0.1, False, False, dimensions=dims))  # fmt: skip
        if rng.random() < 0.7:
            reports.append(Outcome(rid, "accepted", float(rng.random() < 0.6), float(i)))
    return rows, reports


def _expected(rows: list[Exposure], reports: list[Outcome], top: int
              ) -> dict[str, dict[str, tuple[int, int, float, float]]]:  # fmt: skip
    """Per segment and arm, from the events in Python: users, requests, and the per-user
    sums of `accepted` (x over its reports) and of latency."""
    counts: dict[str, int] = {}
    for e in rows:
        v = e.dimensions.get("x-client", "(none)")
        counts[v] = counts.get(v, 0) + 1
    kept = sorted(counts, key=lambda v: (-counts[v], v))[:top]
    accepted = {o.request_id: o.value for o in reports}
    units: dict[tuple[str, str, str], list[float]] = {}
    for e in rows:
        v = e.dimensions.get("x-client", "(none)")
        key = (v if v in kept else "other", e.arm, e.unit)
        u = units.setdefault(key, [0, 0.0, 0.0])
        u[0] += 1
        u[1] += accepted.get(e.request_id, 0.0)
        u[2] += e.latency_ms
    out: dict[str, dict[str, tuple[int, int, float, float]]] = {}
    for (segment, arm, _), (n, x, latency) in units.items():
        users, requests, sx, sl = out.setdefault(segment, {}).get(arm, (0, 0, 0.0, 0.0))
        out[segment][arm] = (users + 1, requests + int(n), sx + x, sl + latency)
    return out


def test_segment_statistics_equal_the_events_summed_in_python(store: ResultsStore) -> None:
    # A phase of its own: the PostgreSQL database is shared by the session's tests.
    seed = f"segments-{random.random()}"
    rows, reports = _events(random.Random(7), seed)
    store.write(rows, reports)
    by_value, distinct = segment_statistics(store, "ab", seed, "x-client", ["accepted"], top=20)
    expected = _expected(rows, reports, 20)
    assert distinct == 33  # web, ios, 30 rare clients, (none)
    assert len(by_value) == 21 and "other" in by_value and "(none)" in by_value
    assert set(by_value) == set(expected)
    for segment, arms in expected.items():
        for arm, (users, requests, sx, latency) in arms.items():
            got = by_value[segment][arm]
            assert (got.units, got.requests) == (users, requests), (segment, arm)
            assert got.metrics["accepted"].x == pytest.approx(sx)
            assert got.metrics["latency_ms"].x == pytest.approx(latency)

    settings = ExperimentSettings(**two_arms(dimensions=["x-client"], min_samples=2))
    judged = judge_segments(settings, by_value, {"accepted": True}, "holm")
    raw = [s.report.comparisons for s in judged]
    p = [c.effect.p_value for cs in raw for c in cs if c.metric == "accepted"]
    q = [s.adjusted_p[("candidate", "accepted")] for s, cs in zip(judged, raw, strict=True)
         if any(c.metric == "accepted" for c in cs)]  # fmt: skip
    assert q == pytest.approx(list(multipletests(p, method="holm")[1]))
