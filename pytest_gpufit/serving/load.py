"""Load levels against a server: closed loop at each concurrency, or Poisson arrivals at a rate.

Each level is bounded by a request count and by seconds (no new request starts after the time
is up; those in flight end within their own timeout). Per level it reports what vLLM's
``benchmark_serving`` (``vllm bench serve``) reports, under the same names: ``completed``,
``request_throughput`` (req/s), ``output_throughput`` (output tok/s), TTFT, TPOT, ITL and E2E
latency (``e2el``) as mean/p50/p90/p99 in ms, and ``request_goodput`` (good requests per
second); plus ``error_rate`` and ``goodput`` as a share: the fraction of all requests sent that
met every per-request SLO, as AIPerf and DistServe define goodput (a failed request never
meets it). Percentiles interpolate linearly (``statistics.quantiles``, method "inclusive"), as
numpy's default (which vLLM uses) does.

Every figure comes from what the client received: a stream that arrived in a burst (a
buffering proxy, a replayed answer: ``client.buffering``) keeps its TTFT and E2E but gives no
ITL or TPOT and meets no TPOT objective, and the level counts it (``buffered``). Each request
gets a prompt of its own (``prompts="unique"``: its first words differ, as vLLM's ``random``
dataset makes its prompts), so a server's prefix cache or an answer cache cannot serve one
request from another's work; ``prompts="shared"`` sends the one prompt again on purpose (a
cache-hit workload). ``distinct_prompts`` in the figures says which.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pytest_gpufit.serving.client import GenRequest, OpenAIClient, StreamResult, exact_words
from pytest_gpufit.serving.errors import EndpointError
from pytest_gpufit.serving.prompts import prompt_keys, unique_prompt

Prompts = Literal["unique", "shared"]


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1..99) with linear interpolation (numpy's default method).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    >>> percentile([10.0, 20.0, 30.0, 40.0, 50.0], 90)
    46.0
    >>> percentile([7.0], 99)
    7.0
    """
    if not values:
        raise ValueError("percentile of no values")
    if len(values) == 1:
        return float(values[0])  # statistics.quantiles wants two points before Python 3.13
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


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
    if len(values) == 1:
        cuts = [float(values[0])] * 99
    else:
        cuts = statistics.quantiles(values, n=100, method="inclusive")
    return Percentiles(
        mean=round(statistics.fmean(values), 9),
        p50=round(cuts[49], 9),
        p90=round(cuts[89], 9),
        p99=round(cuts[98], 9),
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
        """Whether one request met every objective. A buffered stream has no TPOT to meet one
        with (a single token has none to miss).

        >>> r = StreamResult(0.2, (0.01,), 1.2, "", 2, 8, 101, "length", True, None, 0.0)
        >>> Slo(ttft_ms=300, tpot_ms=20).met_by(r), Slo(ttft_ms=100).met_by(r)
        (True, False)
        >>> burst = dataclasses.replace(r, buffered="buffered: ...")
        >>> Slo(ttft_ms=300, tpot_ms=20).met_by(burst)
        False
        """
        if self.ttft_ms is not None and result.ttft_s * 1000 > self.ttft_ms:
            return False
        tpot = result.tpot_s
        if self.tpot_ms is not None and result.buffered is not None:
            return False
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
    buffered: int = 0
    buffered_reason: str | None = None
    silent: int = 0  # answers that carried no text (their TTFT is their first token's event)
    distinct_prompts: int = 0
    prompt_tokens: tuple[int, int] | None = None  # fewest and most, as the server counted
    # Answers that stopped before the exact count asked for (``ignore_eos``), and why.
    short: int = 0
    short_reason: str | None = None
    # Per buffered stream of 2+ tokens, the most its gaps and its TPOT can have been (ms): its
    # tokens were all made within its E2E, so a gap is at most that, a TPOT that over tokens - 1.
    buffered_worst_ms: tuple[tuple[float, float], ...] = ()
    # The median TTFT and decode (E2E - TTFT) of the streams of 2+ tokens that arrived paced
    # (ms), for the held-first-token check; None where none did.
    paced_ms: tuple[float, float] | None = None

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
            "buffered": float(self.buffered),
            "silent": float(self.silent),
            "distinct_prompts": float(self.distinct_prompts),
            "short": float(self.short),
        }
        if self.prompt_tokens is not None:
            out["min_prompt_tokens"], out["max_prompt_tokens"] = map(float, self.prompt_tokens)
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
    distinct_prompts: int = 0,
    asked: int | None = None,
) -> LevelResult:
    """Summarize a level's outcomes (pure: the numbers come only from the arguments).
    ``asked``: the exact count each request asked for (``ignore_eos``), where one was; an
    answer the server counted short of it is ``short``.

    >>> ok = StreamResult(0.1, (0.01, 0.03), 0.2, "abc", 3, 4, 3, "length", True, None, 0.0)
    >>> bad = Outcome(None, "HTTP 500", "status")
    >>> level = summarize_level([Outcome(ok), Outcome(ok), bad], 2.0, Slo(ttft_ms=150), 2)
    >>> level.completed, level.failed, round(level.error_rate, 3), round(level.goodput, 3)
    (2, 1, 0.333, 0.667)
    >>> level.request_throughput, level.output_throughput, level.ttft_ms.p99
    (1.0, 3.0, 100.0)
    >>> burst = dataclasses.replace(ok, itl_s=(), buffered="buffered: ...")
    >>> level = summarize_level([Outcome(burst), Outcome(ok)], 1.0)
    >>> level.buffered, level.itl_ms.count, level.tpot_ms.count, level.ttft_ms.count
    (1, 2, 1, 2)
    >>> asked = dataclasses.replace(ok, exact_by="ignore_eos")
    >>> level = summarize_level([Outcome(asked)], 1.0, asked=8)
    >>> level.short, level.short_reason
    (1, "3 of 8 tokens, finish_reason 'length' (ignore_eos asked with ignore_eos)")
    """
    good = [o.result for o in outcomes if o.result is not None]
    failed = [o for o in outcomes if o.result is None]
    sent = len(outcomes)
    tokens = sum(r.tokens for r in good)
    meeting = sum(1 for r in good if slo is None or slo.met_by(r))
    seconds = duration_s if duration_s > 0 else float("nan")
    kinds = Counter(o.kind or "error" for o in failed)
    distinct: list[str] = []
    for o in failed:
        if o.error and o.error not in distinct and len(distinct) < 3:
            distinct.append(o.error)
    # Only streams that arrived as they were made give gaps (a buffered one has none).
    tpots = [t * 1000 for r in good if (t := r.tpot_s) is not None]
    buffered = [r.buffered for r in good if r.buffered is not None]
    counted = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
    short = [
        r
        for r in good
        if asked is not None and r.completion_tokens is not None and r.completion_tokens < asked
    ]
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
        buffered=len(buffered),
        buffered_reason=buffered[0] if buffered else None,
        silent=sum(1 for r in good if r.content_chunks == 0),
        distinct_prompts=distinct_prompts,
        prompt_tokens=(min(counted), max(counted)) if counted else None,
        short=len(short),
        paced_ms=(
            (
                statistics.median(r.ttft_s * 1000 for r in paced),
                statistics.median((r.e2e_s - r.ttft_s) * 1000 for r in paced),
            )
            if (paced := [r for r in good if r.buffered is None and r.tokens >= 2])
            else None
        ),
        buffered_worst_ms=tuple(
            (r.e2e_s * 1000, r.e2e_s * 1000 / (r.tokens - 1))
            for r in good
            if r.buffered is not None and r.tokens >= 2
        ),
        short_reason=(
            f"{short[0].completion_tokens} of {asked} tokens, finish_reason "
            f"{short[0].finish_reason!r} (ignore_eos asked with {exact_words(short[0].exact_by)})"
            if short
            else None
        ),
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
    if level.buffered:
        line += (
            f"; {level.buffered} of {level.completed} streams gave no ITL/TPOT: "
            f"{level.buffered_reason}"
        )
    if level.silent:
        line += f"; {level.silent} of {level.completed} answers carried no text"
    if level.short:
        line += f"; {level.short} of {level.completed} answers stopped short: {level.short_reason}"
    return line


def _cancelling() -> bool:
    """True once this task was asked to stop (Ctrl-C cancels the level), even where the
    request in flight swallowed the cancel: Python 3.11's ``asyncio.wait_for`` returns the
    answer instead of raising when the answer and the cancel meet, and a worker that went on to
    its next request kept a Ctrl-C'd load running to its end. (Python 3.10 has no
    ``Task.cancelling``: there this is always False.)"""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


async def _one(client: OpenAIClient, request: GenRequest) -> Outcome:
    try:
        return Outcome(await client.stream(request))
    except EndpointError as exc:
        return Outcome(None, str(exc), exc.kind)


def _prompted(
    requests: Sequence[GenRequest], prompts: Prompts, keys: Iterator[int]
) -> Callable[[int], GenRequest]:
    """The ``i``-th request of a level: paced=False (a burst keeps its TTFT and E2E; the
    level leaves out its gaps), need_content=False (an answer with no text, a first token
    that is EOS, is an answer; the level counts them) and, for unique prompts, a prompt no
    other request has."""
    base = [dataclasses.replace(r, paced=False, need_content=False) for r in requests]
    if prompts == "shared":
        return lambda i: base[i % len(base)]
    return lambda i: dataclasses.replace(
        base[i % len(base)], prompt=unique_prompt(base[i % len(base)].prompt, next(keys))
    )


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
    prompts: Prompts = "unique",
    keys: Iterator[int] | None = None,
) -> LevelResult:
    """One level: ``concurrency`` closed-loop workers, or Poisson arrivals at ``rate`` req/s
    (capped at ``concurrency`` in flight when both are given). ``prompts="unique"`` makes
    each request's prompt its own with ``keys`` (a random start when None)."""
    if not requests:
        raise ValueError("run_level needs at least one request")
    if concurrency is None and rate is None:
        raise ValueError("a level needs a concurrency or a rate")
    if prompts not in ("unique", "shared"):
        raise ValueError(f"prompts is {prompts!r}; expected 'unique' or 'shared'")
    make = _prompted(requests, prompts, keys if keys is not None else prompt_keys())
    sent: set[str] = set()
    counter = itertools.count()
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    deadline = start + max_seconds

    def next_request() -> GenRequest | None:
        if _cancelling():
            return None
        i = next(counter)
        if i >= max_requests or time.perf_counter() >= deadline:
            return None
        request = make(i)
        sent.add(request.prompt)
        return request

    if rate is None:
        assert concurrency is not None

        async def worker() -> None:
            while (request := next_request()) is not None:
                outcomes.append(await _one(client, request))

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
        while (request := next_request()) is not None:
            tasks.append(asyncio.ensure_future(bounded(request)))
            arrival += rng.expovariate(rate)
            delay = arrival - time.perf_counter()
            if arrival >= deadline:
                break
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    exact = {r.max_tokens for r in requests if r.ignore_eos}
    asked = exact.pop() if len(exact) == 1 and all(r.ignore_eos for r in requests) else None
    return summarize_level(outcomes, duration, slo, concurrency, rate, len(sent), asked)


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
    prompts: Prompts = "unique",
    keys: Iterator[int] | None = None,
) -> tuple[LevelResult, ...]:
    """Every concurrency level, then every rate level; ``on_level`` hears each as it ends.
    Unique prompts stay unique across the levels (one run of ``keys``: give the target's own
    run, so that its other checks' prompts do not come again either)."""
    levels: list[LevelResult] = []
    cap = max(concurrency) if rates and concurrency else None
    plan: list[tuple[int | None, float | None]] = [(c, None) for c in concurrency]
    plan += [(cap, r) for r in rates]
    keys = keys if keys is not None else prompt_keys()
    for conc, rate in plan:
        level = await run_level(
            client,
            requests,
            concurrency=conc,
            rate=rate,
            max_requests=max_requests,
            max_seconds=max_seconds,
            slo=slo,
            prompts=prompts,
            keys=keys,
        )
        levels.append(level)
        if on_level is not None:
            on_level(level)
    return tuple(levels)
