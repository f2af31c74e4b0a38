"""Load levels against the local fake server: bounds, percentiles, errors, goodput, progress."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from serving_fakes import MODEL, FakeOpenAI

from pytest_gpufit.serving.client import GenRequest, OpenAIClient
from pytest_gpufit.serving.load import LevelResult, Slo, format_level, run_level, run_load

# The machine alone for this file: its streams are timed (tests/conftest.py, cpu_alone).
pytestmark = pytest.mark.usefixtures("cpu_alone")

REQUEST = GenRequest(MODEL, "a b", max_tokens=4, timeout_s=10)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def load(url: str, **kwargs: Any) -> tuple[LevelResult, ...]:
    async def go() -> tuple[LevelResult, ...]:
        async with OpenAIClient(url, stall_s=5) as client:
            return await run_load(client, [REQUEST], **kwargs)

    return asyncio.run(go())


def test_levels_report_percentiles_throughput_and_progress(fake: FakeOpenAI) -> None:
    fake.delay_s = 0.01
    lines: list[str] = []
    levels = load(
        fake.base_url,
        concurrency=[1, 4],
        max_requests=8,
        slo=Slo(ttft_ms=5000, tpot_ms=5000),
        on_level=lambda level: lines.append(format_level(level)),
    )
    assert [level.concurrency for level in levels] == [1, 4]
    for level in levels:
        assert (level.sent, level.completed, level.failed) == (8, 8, 0)
        assert level.error_rate == 0 and level.goodput == 1.0
        assert level.total_output_tokens == 32
        for stats in (level.ttft_ms, level.itl_ms, level.e2el_ms, level.tpot_ms):
            assert stats is not None and 0 < stats.p50 <= stats.p90 <= stats.p99
        assert level.ttft_ms is not None and level.e2el_ms is not None
        assert level.ttft_ms.p50 < level.e2el_ms.p50
        assert level.itl_ms is not None and level.itl_ms.count == 8 * 3
        assert level.request_throughput == pytest.approx(8 / level.duration_s)
        assert level.output_throughput == pytest.approx(32 / level.duration_s)
        metrics = level.metrics()
        assert metrics["p99_ttft_ms"] == level.ttft_ms.p99 and "median_itl_ms" in metrics
    # Four workers finish eight requests sooner than one does.
    assert levels[1].duration_s < levels[0].duration_s
    assert len(lines) == 2 and lines[0].startswith("concurrency 1: 8/8 ok")


def test_goodput_counts_requests_meeting_every_slo(fake: FakeOpenAI) -> None:
    fake.delay_s = 0.02
    (level,) = load(fake.base_url, concurrency=[2], max_requests=4, slo=Slo(ttft_ms=1.0))
    assert level.completed == 4 and level.goodput == 0.0 and level.request_goodput == 0.0


def test_500_mid_run_is_counted_as_errors(fake: FakeOpenAI) -> None:
    fake.fail_after = 5
    (level,) = load(fake.base_url, concurrency=[2], max_requests=10)
    assert (level.completed, level.failed) == (5, 5)
    assert level.error_rate == 0.5 and dict(level.error_kinds) == {"status": 5}
    assert "HTTP 500" in level.errors[0]
    assert "first error:" in format_level(level)


def test_server_dying_mid_load_ends_the_level_with_errors(fake: FakeOpenAI) -> None:
    fake.delay_s = 0.01

    def die() -> None:
        # After a few requests arrived (not after a fixed time: a loaded machine is slow).
        deadline = time.monotonic() + 20
        while len(fake.bodies) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        fake.shutdown()
        fake.server_close()

    killer = threading.Thread(target=die)
    killer.start()
    start = time.monotonic()
    (level,) = load(fake.base_url, concurrency=[2], max_requests=500, max_seconds=30)
    killer.join()
    assert level.completed > 0 and level.failed > 0
    assert "connect" in dict(level.error_kinds)
    assert time.monotonic() - start < 30


def test_level_bounded_in_seconds(fake: FakeOpenAI) -> None:
    fake.delay_s = 0.02
    start = time.monotonic()
    (level,) = load(fake.base_url, concurrency=[2], max_requests=10_000, max_seconds=0.5)
    assert time.monotonic() - start < 5
    assert 0 < level.sent < 10_000 and level.failed == 0


def test_poisson_rate_level(fake: FakeOpenAI) -> None:
    async def go() -> LevelResult:
        async with OpenAIClient(fake.base_url) as client:
            return await run_level(client, [REQUEST], rate=40.0, max_requests=12, seed=1)

    level = asyncio.run(go())
    assert level.rate == 40.0 and level.concurrency is None
    assert (level.sent, level.completed) == (12, 12)
    # 11 exponential gaps at 40/s average 0.275 s; a closed loop would take a few ms.
    assert 0.05 < level.duration_s < 5
    assert format_level(level).startswith("rate 40/s: 12/12 ok")


def test_rate_levels_follow_concurrency_levels(fake: FakeOpenAI) -> None:
    levels = load(fake.base_url, concurrency=[1], rates=[50.0], max_requests=3)
    assert [(level.concurrency, level.rate) for level in levels] == [(1, None), (1, 50.0)]


def test_a_level_needs_a_concurrency_or_a_rate(fake: FakeOpenAI) -> None:
    async def go() -> None:
        async with OpenAIClient(fake.base_url) as client:
            await run_level(client, [REQUEST])

    with pytest.raises(ValueError, match="concurrency or a rate"):
        asyncio.run(go())


class _SwallowsTheCancel:
    """A client whose request in flight swallows a cancel and answers, as Python 3.11's
    ``asyncio.wait_for`` does when the answer and the cancel meet."""

    def __init__(self) -> None:
        self.sent = 0

    async def stream(self, request: GenRequest) -> object:
        self.sent += 1
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
        return object()


@pytest.mark.skipif(not hasattr(asyncio.Task, "cancelling"), reason="Python 3.11+")
def test_a_cancelled_level_sends_no_more_requests_even_when_one_swallowed_the_cancel() -> None:
    """Ctrl-C cancels the level; a worker whose request swallowed the cancel went on to its next
    request, and a 50-request load ran to its end after the Ctrl-C."""
    client = _SwallowsTheCancel()

    async def go() -> None:
        level = asyncio.ensure_future(
            run_level(client, [REQUEST], concurrency=2, max_requests=50)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.12)  # in the third round of requests
        level.cancel()
        with pytest.raises(asyncio.CancelledError):
            await level

    asyncio.run(go())
    assert client.sent <= 8, client.sent
