"""Load levels against a server: closed loop at each concurrency, or Poisson arrivals at a rate.

Each level is bounded by a request count and by seconds (no new request starts after the time
is up; those in flight end within their own timeout). Per level it reports what vLLM's
``benchmark_serving`` (``vllm bench serve``) reports, under the same names: ``completed``,
``request_throughput`` (req/s), ``output_throughput`` (output tok/s), TTFT, TPOT, ITL and E2E
latency (``e2el``) as mean/p50/p90/p99 in ms, and ``request_goodput`` (good requests per
second); plus ``error_rate`` and ``goodput`` as a share: the fraction of all requests sent that
met every per-request SLO, as AIPerf and DistServe define goodput (a failed request never
meets it). Percentiles interpolate linearly, as numpy's default (which vLLM uses) does.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pytest_gpufit.serving.client import GenRequest, OpenAIClient, StreamResult
from pytest_gpufit.serving.errors import EndpointError


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default method).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    >>> percentile([10.0, 20.0, 30.0, 40.0, 50.0], 90)
    46.0
    >>> percentile([7.0], 99)
    7.0
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Percentiles:
    """Mean and p50/p90/p99 of one metric over a level, in the unit its name says (ms)."""

    mean: float
    p50: float
    p90: float
    p99: float
    count: int


def percentiles(values: Sequence[float]) -> Percentiles | None:
    """Mean, p50, p90, p99 and count; None for no values.

    >>> percentiles([1.0, 2.0, 3.0, 4.0, 5.0])
    Percentiles(mean=3.0, p50=3.0, p90=4.6, p99=4.96, count=5)
    >>> percentiles([]) is None
    True
    """
    if not values:
        return None
    return Percentiles(
        mean=round(sum(values) / len(values), 9),
        p50=round(percentile(values, 50), 9),
        p90=round(percentile(values, 90), 9),
        p99=round(percentile(values, 99), 9),
        count=len(values),
    )


@dataclass(frozen=True)
class Slo:
    """Per-request service-level objectives in ms (None: not judged). ``tpot_ms`` bounds a
    request's mean time per output token after the first, as vLLM's ``--goodput tpot:`` does."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met_by(self, result: StreamResult) -> bool:
        """Whether one request met every objective.

        >>> r = StreamResult(0.2, (0.01,), 1.2, "", 2, 8, 101, "length", True, None, 0.0)
        >>> Slo(ttft_ms=300, tpot_ms=20).met_by(r), Slo(ttft_ms=100).met_by(r)
        (True, False)
        """
        if self.ttft_ms is not None and result.ttft_s * 1000 > self.ttft_ms:
            return False
        tpot = result.tpot_s
        if self.tpot_ms is not None and tpot is not None and tpot * 1000 > self.tpot_ms:
            return False
        return not (self.e2e_ms is not None and result.e2e_s * 1000 > self.e2e_ms)


@dataclass(frozen=True)
class Outcome:
    """One request of a level: its measurement, or the error it ended with."""

    result: StreamResult | None
    error: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class LevelResult:
    """What one load level measured. ``concurrency`` or ``rate`` (req/s) names the level."""

    concurrency: int | None
    rate: float | None
    sent: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_output_tokens: int
    error_rate: float
    goodput: float
    request_goodput: float
    ttft_ms: Percentiles | None
    tpot_ms: Percentiles | None
    itl_ms: Percentiles | None
    e2el_ms: Percentiles | None
    errors: tuple[str, ...]
    error_kinds: tuple[tuple[str, int], ...]

    @property
    def name(self) -> str:
        if self.rate is not None:
            return f"rate {self.rate:g}/s"
        return f"concurrency {self.concurrency}"

    def metrics(self) -> dict[str, float]:
        """The level's figures under vLLM's benchmark names (``p99_ttft_ms`` ...)."""
        out: dict[str, float] = {
            "completed": float(self.completed),
            "failed": float(self.failed),
            "duration_s": self.duration_s,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "error_rate": self.error_rate,
            "goodput": self.goodput,
            "request_goodput": self.request_goodput,
        }
        for metric, stats in (
            ("ttft", self.ttft_ms),
            ("tpot", self.tpot_ms),
            ("itl", self.itl_ms),
            ("e2el", self.e2el_ms),
        ):
            if stats is None:
                continue
            out[f"mean_{metric}_ms"] = stats.mean
            out[f"median_{metric}_ms"] = stats.p50
            out[f"p90_{metric}_ms"] = stats.p90
            out[f"p99_{metric}_ms"] = stats.p99
        return out


def summarize_level(
    outcomes: Sequence[Outcome],
    duration_s: float,
    slo: Slo | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
) -> LevelResult:
    """Summarize a level's outcomes (pure: the numbers come only from the arguments).

    >>> ok = StreamResult(0.1, (0.01, 0.03), 0.2, "abc", 3, 4, 3, "length", True, None, 0.0)
    >>> bad = Outcome(None, "HTTP 500", "status")
    >>> level = summarize_level([Outcome(ok), Outcome(ok), bad], 2.0, Slo(ttft_ms=150), 2)
    >>> level.completed, level.failed, round(level.error_rate, 3), round(level.goodput, 3)
    (2, 1, 0.333, 0.667)
    >>> level.request_throughput, level.output_throughput, level.ttft_ms.p99
    (1.0, 3.0, 100.0)
    """
    good = [o.result for o in outcomes if o.result is not None]
    failed = [o for o in outcomes if o.result is None]
    sent = len(outcomes)
    tokens = sum(
        r.completion_tokens if r.completion_tokens is not None else r.content_chunks for r in good
    )
    meeting = sum(1 for r in good if slo is None or slo.met_by(r))
    seconds = duration_s if duration_s > 0 else float("nan")
    kinds = Counter(o.kind or "error" for o in failed)
    distinct: list[str] = []
    for o in failed:
        if o.error and o.error not in distinct and len(distinct) < 3:
            distinct.append(o.error)
    tpots = [t * 1000 for r in good if (t := r.tpot_s) is not None]
    return LevelResult(
        concurrency=concurrency,
        rate=rate,
        sent=sent,
        completed=len(good),
        failed=len(failed),
        duration_s=duration_s,
        request_throughput=len(good) / seconds,
        output_throughput=tokens / seconds,
        total_output_tokens=tokens,
        error_rate=len(failed) / sent if sent else 0.0,
        goodput=meeting / sent if sent else 0.0,
        request_goodput=meeting / seconds,
        ttft_ms=percentiles([r.ttft_s * 1000 for r in good]),
        tpot_ms=percentiles(tpots),
        itl_ms=percentiles([gap * 1000 for r in good for gap in r.itl_s]),
        e2el_ms=percentiles([r.e2e_s * 1000 for r in good]),
        errors=tuple(distinct),
        error_kinds=tuple(sorted(kinds.items())),
    )


def format_level(level: LevelResult) -> str:
    """One progress line for a level.

    >>> ok = StreamResult(0.1, (0.02,), 0.2, "ab", 2, 4, 2, "length", True, None, 0.0)
    >>> line = format_level(summarize_level([Outcome(ok)], 0.5, concurrency=1))
    >>> line.split(", TTFT")[0]
    'concurrency 1: 1/1 ok, 2.0 req/s, 4.0 tok/s'
    >>> line.split("tok/s, ")[1]
    'TTFT p50/p99 100.0/100.0 ms, ITL p99 20.0 ms, goodput 100%'
    """
    ttft = f"{level.ttft_ms.p50:.1f}/{level.ttft_ms.p99:.1f}" if level.ttft_ms else "-/-"
    itl = f"{level.itl_ms.p99:.1f}" if level.itl_ms else "-"
    line = (
        f"{level.name}: {level.completed}/{level.sent} ok, "
        f"{level.request_throughput:.1f} req/s, {level.output_throughput:.1f} tok/s, "
        f"TTFT p50/p99 {ttft} ms, ITL p99 {itl} ms, goodput {level.goodput:.0%}"
    )
    if level.errors:
        line += f"; first error: {level.errors[0]}"
    return line


async def _one(client: OpenAIClient, request: GenRequest) -> Outcome:
    try:
        return Outcome(await client.stream(request))
    except EndpointError as exc:
        return Outcome(None, str(exc), exc.kind)


async def run_level(
    client: OpenAIClient,
    requests: Sequence[GenRequest],
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    max_requests: int = 64,
    max_seconds: float = 300.0,
    slo: Slo | None = None,
    seed: int = 0,
) -> LevelResult:
    """One level: ``concurrency`` closed-loop workers, or Poisson arrivals at ``rate`` req/s
    (capped at ``concurrency`` in flight when both are given)."""
    if not requests:
        raise ValueError("run_level needs at least one request")
    if concurrency is None and rate is None:
        raise ValueError("a level needs a concurrency or a rate")
    counter = itertools.count()
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    deadline = start + max_seconds

    def next_index() -> int | None:
        i = next(counter)
        if i >= max_requests or time.perf_counter() >= deadline:
            return None
        return i

    if rate is None:
        assert concurrency is not None

        async def worker() -> None:
            while (i := next_index()) is not None:
                outcomes.append(await _one(client, requests[i % len(requests)]))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        gate = asyncio.Semaphore(concurrency) if concurrency else None
        rng = random.Random(seed)

        async def bounded(request: GenRequest) -> None:
            if gate is None:
                outcomes.append(await _one(client, request))
                return
            async with gate:
                outcomes.append(await _one(client, request))

        tasks: list[asyncio.Task[None]] = []
        arrival = start
        while (i := next_index()) is not None:
            tasks.append(asyncio.ensure_future(bounded(requests[i % len(requests)])))
            arrival += rng.expovariate(rate)
            delay = arrival - time.perf_counter()
            if arrival >= deadline:
                break
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    return summarize_level(outcomes, duration, slo, concurrency, rate)


async def run_load(
    client: OpenAIClient,
    requests: Sequence[GenRequest],
    *,
    concurrency: Sequence[int] = (1,),
    rates: Sequence[float] = (),
    max_requests: int = 64,
    max_seconds: float = 300.0,
    slo: Slo | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
) -> tuple[LevelResult, ...]:
    """Every concurrency level, then every rate level; ``on_level`` hears each as it ends."""
    levels: list[LevelResult] = []
    cap = max(concurrency) if rates and concurrency else None
    plan: list[tuple[int | None, float | None]] = [(c, None) for c in concurrency]
    plan += [(cap, r) for r in rates]
    for conc, rate in plan:
        level = await run_level(
            client,
            requests,
            concurrency=conc,
            rate=rate,
            max_requests=max_requests,
            max_seconds=max_seconds,
            slo=slo,
        )
        levels.append(level)
        if on_level is not None:
            on_level(level)
    return tuple(levels)
