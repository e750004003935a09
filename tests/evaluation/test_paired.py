"""The offline comparison's paired tests (scipy.stats) against independent references:
statsmodels' exact McNemar, and a hand-written percentile bootstrap of paired differences."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from evaluation.analysis import mcnemar, paired_bootstrap, wilcoxon

RNG = np.random.default_rng(20261202)


@pytest.mark.parametrize(("b", "c"), [(3, 9), (0, 5), (10, 10), (40, 62), (120, 80)])
def test_mcnemar_is_the_exact_test(b: int, c: int) -> None:
    reference = sm_mcnemar([[50, b], [c, 50]], exact=True).pvalue
    assert mcnemar(b, c) == pytest.approx(reference, rel=1e-9)
    assert mcnemar(0, 0) == 1.0


def test_wilcoxon_drops_zero_differences_and_handles_no_difference() -> None:
    x = np.round(RNG.normal(0.3, 0.2, 80), 2)  # rounded: ties and zero differences happen
    y = np.round(RNG.normal(0.25, 0.2, 80), 2)
    p = wilcoxon(x, y)
    assert 0 < p < 1
    assert wilcoxon(x + 1.0, y) < p  # a larger shift is more significant
    assert wilcoxon(x, x.copy()) == 1.0


def test_paired_bootstrap_matches_a_hand_written_one() -> None:
    x, y = RNG.normal(1.0, 1.0, 300), RNG.normal(0.8, 1.0, 300)
    point, (low, high) = paired_bootstrap(x, y, alpha=0.05, resamples=4000, seed=1)
    d = x - y
    draws = d[np.random.default_rng(7).integers(0, d.size, (4000, d.size))].mean(axis=1)
    assert point == pytest.approx(d.mean())
    assert low == pytest.approx(np.quantile(draws, 0.025), abs=0.02)
    assert high == pytest.approx(np.quantile(draws, 0.975), abs=0.02)
    assert paired_bootstrap(x, y, 0.05, seed=1) == paired_bootstrap(x, y, 0.05, seed=1)
    assert paired_bootstrap(x, x + 0.5, 0.05) == (-0.5, (-0.5, -0.5))
