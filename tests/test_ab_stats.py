"""The statistics of gpufit ab on synthetic samples of known distributions (issue 20).

Deterministic seeds; each simulation is a few hundred runs of pure Python (well under a second).
The noise is multiplicative (log-normal), as timings are, plus a heavy-tailed variant: the
interval assumes no shape.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable

import pytest

from pytest_gpufit.ab import stats

Draw = Callable[[], float]


def lognormal(rng: random.Random, sigma: float, factor: float = 1.0) -> Draw:
    return lambda: factor * math.exp(rng.gauss(0.0, sigma))


def heavy(rng: random.Random, sigma: float, factor: float = 1.0) -> Draw:
    """Log-Student-t with 3 degrees of freedom: an outlier now and then, as a loaded box has."""

    def draw() -> float:
        t = rng.gauss(0, 1) / math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3)
        return factor * math.exp(sigma * t)

    return draw


def outcomes(
    make: Callable[[random.Random, float, float], Draw],
    factor: float,
    sigma: float,
    tolerance: float = 0.05,
    trials: int = 300,
    rounds: int = 12,
    seed: int = 7,
) -> Counter[str]:
    rng = random.Random(seed)
    return Counter(
        stats.sequential(make(rng, sigma, 1.0), make(rng, sigma, factor), rounds, True, tolerance)[
            0
        ]
        for _ in range(trials)
    )


@pytest.mark.parametrize("make", [lognormal, heavy])
@pytest.mark.parametrize("factor", [0.8, 0.9, 1.0, 1.1])
def test_interval_covers_the_true_ratio_95_percent_of_the_time(make, factor):
    rng = random.Random(11)
    trials, n = 400, 10
    covered, widths = 0, []
    for _ in range(trials):
        da, db = make(rng, 0.05, 1.0), make(rng, 0.05, factor)
        iv = stats.interval([da() for _ in range(n)], [db() for _ in range(n)], 0.05)
        covered += iv.low <= factor <= iv.high
        widths.append(iv.high / iv.low)
    # Exact Mann-Whitney intervals are conservative: >= 95% up to the binomial noise of 400
    # trials (sd 1.1%); and they are not trivially wide.
    assert covered / trials >= 0.93
    assert sorted(widths)[trials // 2] < 1.15


def test_no_change_gives_no_false_alarm_and_mostly_same():
    found = outcomes(lognormal, 1.0, 0.02, trials=400)
    assert found["regressed"] + found["improved"] == 0
    assert found["same"] / 400 >= 0.95


def test_false_alarms_hold_over_the_sequential_looks_at_the_tolerance_edge():
    # True ratio 0.95 sits on the edge of a 5% tolerance: every "regressed" or "same" is a
    # coin the procedure must not flip more than alpha/2 of the time over all its looks.
    found = outcomes(lognormal, 0.95, 0.05, trials=600, rounds=20)
    assert found["regressed"] / 600 <= 0.05
    assert found["same"] / 600 <= 0.05
    assert found["inconclusive"] / 600 >= 0.9


@pytest.mark.parametrize(
    ("slowdown", "tolerance", "least"),
    # a 5% change is judged against a 2% tolerance: against 5% it is on the edge, never sure
    [(0.20, 0.05, 0.99), (0.10, 0.05, 0.95), (0.05, 0.02, 0.80)],
)
def test_power_to_find_a_slowdown(slowdown, tolerance, least):
    found = outcomes(lognormal, 1 - slowdown, 0.02, tolerance)
    assert found["regressed"] / 300 >= least
    assert found["improved"] + found["same"] == 0


def test_heavy_tails_do_not_raise_false_alarms():
    found = outcomes(heavy, 1.0, 0.03, trials=300, rounds=20)
    assert found["regressed"] + found["improved"] <= 3  # <= 1%
    assert found["regressed"] / 300 <= 0.01


def test_the_direction_comes_from_the_metric():
    a, b = [10.0, 10.1, 9.9, 10.2, 10.0, 9.95], [12.0, 12.1, 11.9, 12.2, 12.05, 11.95]
    iv = stats.interval(a, b, 0.05)
    assert iv.low > 1.15
    assert stats.verdict(iv, higher_is_better=True) == "improved"  # more tok/s
    assert stats.verdict(iv, higher_is_better=False) == "regressed"  # more ms


def test_too_few_samples_give_no_verdict_and_say_why():
    iv = stats.interval([1.0, 1.01, 0.99], [2.0, 2.01, 1.99], 0.05)
    assert not iv.exists
    assert stats.verdict(iv, True) == "inconclusive"  # even a 2x change: 3 a side cannot tell
    assert "too few samples (3 A, 3 B" in stats.why_inconclusive(iv, 0.05)
    assert stats.looks(3) == ()


def test_looks_are_fixed_in_advance_and_split_alpha():
    schedule = stats.looks(20)
    assert schedule == (7, 14, 20)
    share = stats.look_alpha(schedule)
    assert share == pytest.approx(0.05 / 3)
    # every planned look can give an interval at its share
    assert all(stats.rank_k(r, r, share) >= 1 for r in schedule)


def test_exact_and_normal_critical_values_meet_at_the_switch():
    for alpha in (0.05, 0.01):
        exact = stats.rank_k(50, 50, alpha)
        assert exact > 0
        assert abs(stats.normal_k(50, 50, alpha) - exact) <= 2
    assert stats.rank_k(51, 51, 0.05) == stats.normal_k(51, 51, 0.05)


def test_exact_distribution_sums_to_all_orderings():
    for n, m in [(1, 1), (3, 5), (8, 8), (12, 7)]:
        counts = stats._u_counts(n, m)
        assert sum(counts) == math.comb(n + m, n)
        assert counts == counts[::-1]  # symmetric about n*m/2


def test_values_at_zero_use_the_shift_scale():
    iv = stats.interval([0.0, 0.001, 0.0005, 0.0, 0.0002], [0.0, 0.0011, 0.0004, 0.0, 0.0003])
    assert iv.scale == "shift"
    a, b = [0.0, 1.0, 1.1, 0.9, 1.0], [0.0, 2.0, 2.2, 1.8, 2.0]
    assert stats.interval(a, b).ratio > 1.5


def test_overall_verdict_order():
    assert stats.overall(["same", "regressed", "inconclusive"]) == "regressed"
    assert stats.overall(["same", "improved", "inconclusive"]) == "inconclusive"
    assert stats.overall(["same", "improved"]) == "improved"
    assert stats.overall(["same"]) == "same"


def test_paired_interval_covers_95_percent_and_drift_cancels():
    rng = random.Random(5)
    trials, n = 400, 10
    covered, widths = 0, []
    for _ in range(trials):
        # the machine's speed drifts by up to 2x between rounds; both runs of a round share it
        speed = [math.exp(rng.uniform(-0.7, 0.0)) for _ in range(n)]
        a = [s * math.exp(rng.gauss(0, 0.02)) for s in speed]
        b = [0.9 * s * math.exp(rng.gauss(0, 0.02)) for s in speed]
        iv = stats.paired_interval(a, b, 0.05)
        covered += iv.low <= 0.9 <= iv.high
        widths.append(iv.high / iv.low)
        assert iv.paired
    assert covered / trials >= 0.93
    assert sorted(widths)[trials // 2] < 1.05  # the drift left no trace
    unpaired = stats.interval(a, b, 0.05)
    assert unpaired.high / unpaired.low > 1.3  # without the pairs it swamps the 10%


def test_paired_too_few_rounds_say_so():
    iv = stats.paired_interval([1.0] * 5, [2.0] * 5, 0.05)
    assert not iv.exists and stats.verdict(iv, True) == "inconclusive"
    assert stats.why_inconclusive(iv, 0.05) == (
        "too few rounds (5; the paired interval needs >= 6 at this confidence)"
    )
    assert stats.min_pairs(0.05) == 6


def test_signed_rank_distribution_sums_to_all_sign_patterns():
    for n in (1, 4, 9, 20):
        counts = stats._t_counts(n)
        assert sum(counts) == 2**n
        assert counts == counts[::-1]
    # the textbook critical values (two-sided 5%): T <= 8 at n=10, T <= 25 at n=15
    assert stats.signed_rank_k(10, 0.05) == 9
    assert stats.signed_rank_k(15, 0.05) == 26
