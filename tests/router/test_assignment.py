"""Assignment is a pure function of (seed, user id) with GrowthBook's v2 hashing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.config import ExperimentSettings
from router.experiments.assignment import assign, bucket, choose, fnv1a32, ranges

USERS = [f"user-{i}" for i in range(100_000)]


def experiment(
    coverage: float = 1.0,
    weights: tuple[float, ...] = (0.5, 0.5),
    seed: str = "exp-1",
    **extra: object,
) -> ExperimentSettings:
    arms = [{"name": f"arm{i}", "model": f"m{i}", "weight": w} for i, w in enumerate(weights)]
    return ExperimentSettings.model_validate(
        {"name": "e", "seed": seed, "coverage": coverage, "arms": arms, **extra}
    )


def test_fnv1a32_reference_values() -> None:
    # Published FNV-1a 32-bit test vectors.
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def test_bucket_is_in_unit_interval_with_four_decimals() -> None:
    values = [bucket("s", u) for u in USERS[:5000]]
    assert all(0 <= v < 1 for v in values)
    assert all(abs(round(v * 10000) - v * 10000) < 1e-6 for v in values)


def test_same_user_same_arm_on_any_replica() -> None:
    """Two independently built experiments (two replicas, or a restart) agree on every user."""
    a, b = experiment(0.5), experiment(0.5)
    assert all(assign(a, u) == assign(b, u) for u in USERS[:20_000])


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.9, 0.1), (0.2, 0.3, 0.5)])
@pytest.mark.parametrize("coverage", [1.0, 0.3])
def test_split_matches_configuration_within_one_point(
    weights: tuple[float, ...], coverage: float
) -> None:
    exp = experiment(coverage, weights)
    counts = Counter(a.arm if a else None for a in (assign(exp, u) for u in USERS))
    for i, w in enumerate(weights):
        assert abs(counts[f"arm{i}"] / len(USERS) - coverage * w) < 0.01
    assert abs(counts[None] / len(USERS) - (1 - coverage)) < 0.01


def test_raising_coverage_moves_nobody_out_of_an_arm() -> None:
    low, high = experiment(0.1), experiment(0.5)
    moved = 0
    treated = 0
    for user in USERS:
        before = assign(low, user)
        if before is not None:
            treated += 1
            moved += assign(high, user) != before
    assert treated > 9000 and moved == 0


def test_different_seeds_assign_independently() -> None:
    """Chi-square test of independence on the 2x2 table of arms under two seeds."""
    a, b = experiment(seed="alpha"), experiment(seed="beta")
    table = Counter((assign(a, u).arm, assign(b, u).arm) for u in USERS)  # type: ignore[union-attr]
    rows = {r: sum(v for (x, _), v in table.items() if x == r) for r in ("arm0", "arm1")}
    cols = {c: sum(v for (_, y), v in table.items() if y == c) for c in ("arm0", "arm1")}
    chi2 = sum(
        (table[(r, c)] - rows[r] * cols[c] / len(USERS)) ** 2 / (rows[r] * cols[c] / len(USERS))
        for r in rows
        for c in cols
    )
    assert chi2 < 10.83  # p > 0.001 at one degree of freedom: no evidence of dependence
    same = experiment(seed="alpha")
    assert all(assign(a, u) == assign(same, u) for u in USERS[:1000])


def test_range_boundaries() -> None:
    arm_ranges = ranges([0.3, 0.3, 0.4], 1.0)
    assert choose(0.0, arm_ranges) == 0
    assert choose(0.2999, arm_ranges) == 0
    assert choose(0.3, arm_ranges) == 1  # a start belongs to its arm, an end does not
    assert choose(0.6, arm_ranges) == 2
    assert choose(0.9999, arm_ranges) == 2  # the largest bucket still lands in an arm
    # Every possible bucket gets an arm at full coverage (KServe's splitter missed ~1%).
    for weights in ([0.1] * 10, [1 / 3] * 3, [0.7, 0.2, 0.1]):
        full = ranges(weights, 1.0)
        assert all(choose(n / 10000, full) is not None for n in range(10000))
    half = ranges([0.5, 0.5], 0.5)
    assert choose(0.25, half) is None and choose(0.2499, half) == 0 and choose(0.5, half) == 1


def test_allowlist_overrides_the_hash() -> None:
    exp = experiment(0.01, allowlist={"qa": "arm1"})
    a = assign(exp, "qa")
    assert a is not None and a.arm == "arm1" and a.forced


def test_no_user_id_is_assigned_per_request() -> None:
    exp = experiment()
    rng = random.Random(7)
    arms = Counter(assign(exp, None, rng).arm for _ in range(4000))  # type: ignore[union-attr]
    assert 0.45 < arms["arm0"] / 4000 < 0.55
