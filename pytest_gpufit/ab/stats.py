"""The statistics of ``gpufit ab``: per metric, B over A with a distribution-free interval.

Pure functions, samples in, figures and verdicts out. The method (docs/ab.md says why):

- **Pairs**: ``gpufit ab`` runs A and B once per round, interleaved, so each round gives a
  pair. ``paired_interval`` takes the per-round log ratios ``log b_r - log a_r``: a drift of
  the machine that moves both runs of a round (a neighbour's job, a warming card) cancels.
- **Estimate**: the Hodges-Lehmann estimate of those log ratios (the median of their Walsh
  averages), reported as a ratio ``exp(estimate)``: the typical B/A of a round.
- **Interval**: the Wilcoxon signed-rank confidence interval of it: the k-th smallest and
  k-th largest Walsh average, k read from the exact null distribution of the signed-rank sum
  up to 50 pairs, from its normal approximation above. No assumption on the shape of the noise,
  only that it is symmetric around the round's true ratio. For unpaired samples (the fleet
  view: one host's runs against other hosts'), ``interval`` is the Mann-Whitney (rank-sum)
  counterpart: the median of all ``log b - log a`` and the exact U distribution.
- **No verdict from too few samples**: where even the most extreme averages cannot reach the
  asked confidence (``k == 0``: 5 rounds at 95%), there is no interval and the verdict is
  inconclusive, with that said.
- **Verdict** against the tolerance band ``[1 - t, 1 + t]`` and the metric's direction
  (``pytest_gpufit.metrics``): regressed when the whole interval lies beyond the band on the
  bad side, improved beyond it on the good side, same when the whole interval lies inside the
  band, inconclusive when it straddles an edge.
- **Sequential looks**: ``--rounds`` is a maximum; the run looks at its samples after a fixed
  schedule of rounds (``looks``), chosen before any sample, and stops once every metric has a
  verdict. Each look's interval has confidence ``1 - alpha/L`` (Bonferroni over the L looks),
  so all the intervals of a run cover the true ratio together with probability at least
  ``1 - alpha``, and a verdict taken at any look is wrong at most ``alpha`` of the time.

A metric with a sample of zero or below (KL may be 0) has no logarithm: its differences are
taken on the values themselves, relative to ``max(|median of A|, floor)``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

ALPHA = 0.05  # the whole run's error rate: each look gets ALPHA / len(looks)
TOLERANCE = 0.05
LOOKS = 3  # looks planned in a run of --rounds (fewer where early ones could give no interval)
EXACT_UP_TO = 50  # samples per side; above, U's normal approximation
VERDICTS = ("regressed", "improved", "same", "inconclusive")


@lru_cache(maxsize=512)
def _u_counts(n: int, m: int) -> tuple[int, ...]:
    """How many of the C(n+m, n) orderings give U = 0 .. n*m (the Gaussian binomial
    coefficient's coefficients: prod_{i=1..n} (1 - q^(m+i)) / (1 - q^i)).

    >>> _u_counts(2, 2)
    (1, 1, 2, 1, 1)
    """
    size = n * m + 1
    coef = [0] * size
    coef[0] = 1
    for i in range(1, n + 1):
        step = m + i
        for k in range(size - 1, step - 1, -1):  # times (1 - q^(m+i))
            coef[k] -= coef[k - step]
        for k in range(i, size):  # divided by (1 - q^i): a running sum
            coef[k] += coef[k - i]
    return tuple(coef)


@lru_cache(maxsize=512)
def rank_k(n: int, m: int, alpha: float) -> int:
    """The order statistic k of the pairwise differences that bounds a two-sided ``1 - alpha``
    interval: the largest k with P(U <= k - 1) <= alpha / 2; 0 when none reaches it.

    >>> rank_k(3, 3, 0.05), rank_k(4, 4, 0.05), rank_k(10, 10, 0.05)
    (0, 1, 24)
    """
    if n < 1 or m < 1:
        return 0
    if n <= EXACT_UP_TO and m <= EXACT_UP_TO:
        counts = _u_counts(n, m)
        total = math.comb(n + m, n)
        limit = alpha / 2 * total
        cumulative, k = 0, 0
        for count in counts:
            if cumulative + count > limit:
                break
            cumulative += count
            k += 1
        return min(k, (n * m) // 2)
    return normal_k(n, m, alpha)


def normal_k(n: int, m: int, alpha: float) -> int:
    """``rank_k`` from U's normal approximation (with continuity correction).

    >>> normal_k(10, 10, 0.05), normal_k(60, 60, 0.05)
    (24, 1427)
    """
    z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
    mean, sd = n * m / 2, math.sqrt(n * m * (n + m + 1) / 12)
    return max(0, math.floor(mean - z * sd + 0.5))


def min_samples(alpha: float) -> int:
    """The fewest samples a side (equal sides) with which the interval exists at ``alpha``.

    >>> min_samples(0.05), min_samples(0.05 / 3), min_samples(0.001)
    (4, 5, 7)
    """
    n = 1
    while rank_k(n, n, alpha) == 0:
        n += 1
    return n


def looks(
    rounds: int, planned: int = LOOKS, alpha: float = ALPHA, paired: bool = True
) -> tuple[int, ...]:
    """The round counts after which a run of at most ``rounds`` rounds looks at its samples.

    ``planned`` looks evenly spread up to ``rounds``; a look too early to give any interval at
    its share of ``alpha`` is dropped and ``alpha`` re-split over the rest (fixed before any
    sample is seen, so the Bonferroni bound holds). Empty when even one look at ``rounds`` could
    give no interval.

    >>> looks(20), looks(12), looks(6), looks(5), looks(30, 4)
    ((7, 14, 20), (8, 12), (6,), (), (8, 15, 23, 30))
    """
    chosen = sorted({math.ceil(rounds * k / planned) for k in range(1, planned + 1)})
    while chosen:  # drop the earliest look until every look left can give an interval
        share = alpha / len(chosen)
        need = min_pairs(share) if paired else min_samples(share)
        if chosen[0] >= need:
            return tuple(chosen)
        chosen = chosen[1:]
    return ()


@dataclass(frozen=True)
class Interval:
    """B over A for one metric: the estimate, its interval, and on what scale it was taken."""

    ratio: float
    low: float  # -inf/+inf bounds never occur: without an interval low=0, high=inf
    high: float
    n_a: int
    n_b: int
    confidence: float  # of this look's interval (1 - alpha / looks)
    scale: str  # "log": ratio of the samples; "shift": differences over A's median
    paired: bool = False  # from rounds' pairs (Wilcoxon signed rank), else rank sum

    @property
    def exists(self) -> bool:
        return math.isfinite(self.high) and self.low > 0


def _pairwise(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return sorted(y - x for x in a for y in b)


def interval(
    a: Sequence[float], b: Sequence[float], alpha: float = ALPHA, floor: float = 0.0
) -> Interval:
    """The Hodges-Lehmann ratio B/A and its Mann-Whitney ``1 - alpha`` interval.

    >>> iv = interval([10.0, 10.2, 9.9, 10.1, 10.05], [9.0, 9.1, 8.95, 9.05, 9.2], alpha=0.05)
    >>> round(iv.ratio, 3), round(iv.low, 3), round(iv.high, 3)
    (0.901, 0.886, 0.919)
    >>> interval([1.0, 1.1, 0.9], [1.0, 1.0, 1.0]).exists
    False
    """
    if not a or not b:
        raise ValueError("interval: both sides need samples")
    n, m = len(a), len(b)
    k = rank_k(n, m, alpha)
    confidence = 1 - alpha
    if all(x > 0 for x in (*a, *b)):
        diffs = _pairwise([math.log(x) for x in a], [math.log(y) for y in b])
        ratio = math.exp(statistics.median(diffs))
        if k == 0:
            return Interval(ratio, 0.0, math.inf, n, m, confidence, "log")
        low, high = math.exp(diffs[k - 1]), math.exp(diffs[len(diffs) - k])
        return Interval(ratio, low, high, n, m, confidence, "log")
    reference = max(abs(statistics.median(a)), floor) or 1.0
    diffs = _pairwise(a, b)
    ratio = 1 + statistics.median(diffs) / reference
    if k == 0:
        return Interval(ratio, 0.0, math.inf, n, m, confidence, "shift")
    low = 1 + diffs[k - 1] / reference
    high = 1 + diffs[len(diffs) - k] / reference
    return Interval(ratio, max(low, 1e-12), high, n, m, confidence, "shift")


@lru_cache(maxsize=256)
def _t_counts(n: int) -> tuple[int, ...]:
    """How many of the 2^n sign patterns give the signed-rank sum T+ = 0 .. n(n+1)/2 (the
    coefficients of prod_{i=1..n} (1 + q^i)).

    >>> _t_counts(3)
    (1, 1, 1, 2, 1, 1, 1)
    """
    size = n * (n + 1) // 2 + 1
    coef = [0] * size
    coef[0] = 1
    for i in range(1, n + 1):
        for k in range(size - 1, i - 1, -1):
            coef[k] += coef[k - i]
    return tuple(coef)


@lru_cache(maxsize=512)
def signed_rank_k(n: int, alpha: float) -> int:
    """The order statistic k of the n(n+1)/2 Walsh averages that bounds a two-sided
    ``1 - alpha`` interval (Wilcoxon signed rank): the largest k with P(T+ <= k-1) <= alpha/2;
    0 when none reaches it. Exact up to 50 pairs, normal approximation above.

    >>> signed_rank_k(5, 0.05), signed_rank_k(6, 0.05), signed_rank_k(10, 0.05)
    (0, 1, 9)
    """
    if n < 1:
        return 0
    total_pairs = n * (n + 1) // 2
    if n <= EXACT_UP_TO:
        limit = alpha / 2 * 2**n
        cumulative, k = 0, 0
        for count in _t_counts(n):
            if cumulative + count > limit:
                break
            cumulative += count
            k += 1
        return min(k, total_pairs // 2)
    z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
    mean, sd = total_pairs / 2, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return max(0, math.floor(mean - z * sd + 0.5))


def min_pairs(alpha: float) -> int:
    """The fewest rounds (pairs) with which the paired interval exists at ``alpha``.

    >>> min_pairs(0.05), min_pairs(0.05 / 3)
    (6, 7)
    """
    n = 1
    while signed_rank_k(n, alpha) == 0:
        n += 1
    return n


def paired_interval(
    a: Sequence[float], b: Sequence[float], alpha: float = ALPHA, floor: float = 0.0
) -> Interval:
    """B/A from pairs (``a[i]`` and ``b[i]`` measured in the same round): the Hodges-Lehmann
    estimate of the per-round log ratios (median of their Walsh averages) and its Wilcoxon
    signed-rank ``1 - alpha`` interval. A drift of the machine that moves both runs of a round
    alike cancels in the ratio, which the unpaired ``interval`` cannot do.

    >>> a = [10.0, 10.1, 5.0, 5.1, 9.9, 5.05, 10.05]   # the machine halves its speed and back
    >>> b = [x * 0.9 * f for x, f in zip(a, (1.0, 1.004, 0.998, 1.003, 0.997, 1.001, 1.0))]
    >>> iv = paired_interval(a, b)
    >>> round(iv.ratio, 3), round(iv.low, 3), round(iv.high, 3), iv.scale
    (0.9, 0.898, 0.903, 'log')
    >>> interval(a, b).high > 1.2   # unpaired, the drift swamps the 10%
    True
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired_interval: one A and one B per round")
    n = len(a)
    k = signed_rank_k(n, alpha)
    confidence = 1 - alpha
    logs = all(x > 0 for x in (*a, *b))
    reference = 1.0 if logs else (max(abs(statistics.median(a)), floor) or 1.0)
    if logs:
        d = [math.log(y) - math.log(x) for x, y in zip(a, b, strict=True)]
    else:
        d = [(y - x) / reference for x, y in zip(a, b, strict=True)]
    scale = "log" if logs else "shift"

    def back(v: float) -> float:
        return math.exp(v) if logs else max(1 + v, 1e-12)

    walsh = sorted((d[i] + d[j]) / 2 for i in range(n) for j in range(i, n))
    ratio = back(statistics.median(walsh))
    if k == 0:
        return Interval(ratio, 0.0, math.inf, n, n, confidence, scale, True)
    low, high = back(walsh[k - 1]), back(walsh[len(walsh) - k])
    return Interval(ratio, low, high, n, n, confidence, scale, True)


def verdict(iv: Interval, higher_is_better: bool, tolerance: float = TOLERANCE) -> str:
    """regressed | improved | same | inconclusive, from the interval, the metric's direction
    and the tolerance band ``[1 - tolerance, 1 + tolerance]``.

    >>> iv = Interval(0.9, 0.88, 0.92, 8, 8, 0.95, "log")
    >>> verdict(iv, True), verdict(iv, False), verdict(iv, True, 0.10)
    ('regressed', 'improved', 'inconclusive')
    >>> verdict(Interval(1.0, 0.98, 1.03, 8, 8, 0.95, "log"), True)
    'same'
    """
    if not iv.exists:
        return "inconclusive"
    below, above = iv.high < 1 - tolerance, iv.low > 1 + tolerance
    if below or above:
        worse = below if higher_is_better else above
        return "regressed" if worse else "improved"
    if iv.low >= 1 - tolerance and iv.high <= 1 + tolerance:
        return "same"
    return "inconclusive"


def overall(verdicts: Sequence[str]) -> str:
    """The run's verdict: regressed if any metric is, else inconclusive if any is, else
    improved if any is, else same (also for no metric at all).

    >>> overall(["same", "improved"]), overall(["improved", "inconclusive"]), overall([])
    ('improved', 'inconclusive', 'same')
    """
    for word in ("regressed", "inconclusive", "improved"):
        if word in verdicts:
            return word
    return "same"


def why_inconclusive(iv: Interval, alpha: float) -> str:
    """A short reason for an inconclusive verdict.

    >>> why_inconclusive(Interval(1.0, 0.0, math.inf, 3, 3, 0.95, "log"), 0.05)
    'too few samples (3 A, 3 B; the interval needs >= 4 a side at this confidence)'
    """
    if not iv.exists and iv.paired:
        return (
            f"too few rounds ({iv.n_a}; the paired interval needs >= {min_pairs(alpha)} at "
            "this confidence)"
        )
    if not iv.exists:
        return (
            f"too few samples ({iv.n_a} A, {iv.n_b} B; the interval needs >= "
            f"{min_samples(alpha)} a side at this confidence)"
        )
    return "the interval straddles the tolerance; more rounds narrow it"


def look_alpha(schedule: Sequence[int], alpha: float = ALPHA) -> float:
    """Each look's share of ``alpha`` (Bonferroni over the planned looks).

    >>> look_alpha((8, 12)), look_alpha(())
    (0.025, 0.05)
    """
    return alpha / max(1, len(schedule))


def sequential(
    draw_a: Callable[[], float],
    draw_b: Callable[[], float],
    rounds: int,
    higher_is_better: bool = True,
    tolerance: float = TOLERANCE,
    alpha: float = ALPHA,
) -> tuple[str, int, Interval]:
    """One metric's run of at most ``rounds`` rounds, looking at ``looks(rounds)`` and stopping
    at the first look with a verdict: (verdict, rounds used, the last interval). What
    ``gpufit ab`` does per metric; the tests and benchmarks/ab_statistics.py run it on
    synthetic draws.
    """
    schedule = looks(rounds, alpha=alpha)
    share = look_alpha(schedule, alpha)
    a: list[float] = []
    b: list[float] = []
    last = Interval(1.0, 0.0, math.inf, 0, 0, 1 - share, "log")
    for r in range(1, rounds + 1):
        first, second = (draw_a, draw_b) if r % 2 else (draw_b, draw_a)  # A B, B A, ...
        x, y = first(), second()
        a.append(x if first is draw_a else y)
        b.append(y if first is draw_a else x)
        if r in schedule:
            last = paired_interval(a, b, share)
            word = verdict(last, higher_is_better, tolerance)
            if word != "inconclusive":
                return word, r, last
    return "inconclusive", rounds, last
