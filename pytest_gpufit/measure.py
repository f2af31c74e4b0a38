"""Timing that is correct on a GPU, and summaries of repeated measurements.

CUDA kernels run asynchronously: a timer read without a device synchronisation measures the
launch, not the work. ``timed`` synchronises before it starts and before it stops.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.errors import GpufitError


@dataclass(frozen=True)
class Spread:
    """Median and spread of repeated measurements."""

    median: float
    minimum: float
    maximum: float
    count: int

    @property
    def relative_spread(self) -> float:
        """(max - min) / median: 0.03 means repeats agree within 3%.

        >>> Spread(100.0, 98.0, 101.0, 3).relative_spread
        0.03
        """
        return (self.maximum - self.minimum) / self.median if self.median else 0.0


def summarize(values: Sequence[float]) -> Spread:
    """Median, extremes and count.

    >>> summarize([3.0, 1.0, 2.0])
    Spread(median=2.0, minimum=1.0, maximum=3.0, count=3)
    """
    if not values:
        raise ValueError("no measurements to summarize")
    return Spread(statistics.median(values), min(values), max(values), len(values))


@contextmanager
def timed(sync: Callable[[], None], out: list[float]) -> Iterator[None]:
    """Append the seconds the block took, with the device synchronised at both ends."""
    sync()
    start = time.perf_counter()
    yield
    sync()
    out.append(time.perf_counter() - start)


def device_sync(device: Any) -> Callable[[], None]:
    """A synchronise function for a torch device (a no-op on the CPU)."""
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch  # late: only device work imports torch

        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def repeat(run: Callable[[], dict[str, float]], warmup: int, repeats: int) -> dict[str, Spread]:
    """Run ``warmup`` untimed rounds, then ``repeats`` rounds; summarize each metric.

    A NaN or infinite value in any round is an error: a median can hide one NaN among finite
    values (NaN sorts nowhere), and the run it came from measured nothing.
    """
    for _ in range(warmup):
        run()
    rounds = [run() for _ in range(repeats)]
    for number, values in enumerate(rounds, 1):
        bad = [f"{key} = {value}" for key, value in values.items() if not math.isfinite(value)]
        if bad:
            raise GpufitError(
                f"measured {', '.join(bad)} in round {number} of {repeats}: a measurement must "
                "be a finite number (the device, the backend or the model produced garbage)"
            )
    return {key: summarize([r[key] for r in rounds]) for key in rounds[0]}
