"""The statistics of gpufit ab on synthetic samples: interval coverage, false alarms at no
change, power at 5/10/20% slowdowns, rounds used; log-normal and heavy-tailed noise (issue 20).

Each run is ``pytest_gpufit.ab.stats.sequential``: what ``gpufit ab`` does per metric (rounds of
A and B, looks at ``looks(rounds)``, Bonferroni-split alpha, stop at the first verdict).

    python benchmarks/ab_statistics.py [--trials 2000] [--rounds 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable

from pytest_gpufit.ab import stats


def noise(kind: str, rng: random.Random, sigma: float) -> Callable[[float], float]:
    if kind == "lognormal":
        return lambda factor: factor * math.exp(rng.gauss(0, sigma))

    def heavy(factor: float) -> float:  # log-Student-t, 3 degrees of freedom
        t = rng.gauss(0, 1) / math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3)
        return factor * math.exp(sigma * t)

    return heavy


def coverage(kind: str, sigma: float, n: int, trials: int, seed: int) -> float:
    rng = random.Random(seed)
    draw = noise(kind, rng, sigma)
    hit = 0
    for _ in range(trials):
        iv = stats.interval([draw(1.0) for _ in range(n)], [draw(0.9) for _ in range(n)])
        hit += iv.low <= 0.9 <= iv.high
    return hit / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"looks after rounds {stats.looks(args.rounds)}, alpha 5% split over them")
    for kind in ("lognormal", "heavy"):
        for sigma in (0.02, 0.05):
            cov = {n: coverage(kind, sigma, n, args.trials // 4, args.seed) for n in (5, 10, 20)}
            print(
                f"\n{kind} noise, sigma {sigma:.0%}: 95% interval coverage at n=5/10/20: "
                + ", ".join(f"{c:.1%}" for c in cov.values())
            )
            print("  change  tolerance  regressed  same  inconclusive  improved  rounds(median)")
            for change, tolerance in ((0.0, 0.05), (0.05, 0.02), (0.10, 0.05), (0.20, 0.05)):
                rng = random.Random(args.seed)
                draw = noise(kind, rng, sigma)
                words: Counter[str] = Counter()
                rounds = []
                for _ in range(args.trials):
                    word, used, _ = stats.sequential(
                        lambda d=draw: d(1.0),
                        lambda d=draw, c=change: d(1 - c),
                        args.rounds,
                        True,
                        tolerance,
                    )
                    words[word] += 1
                    rounds.append(used)
                t = args.trials
                print(
                    f"  {change:5.0%}  {tolerance:9.0%}  {words['regressed'] / t:9.1%}  "
                    f"{words['same'] / t:4.0%}  {words['inconclusive'] / t:12.1%}  "
                    f"{words['improved'] / t:8.1%}  {statistics.median(rounds):g}"
                )


if __name__ == "__main__":
    main()
