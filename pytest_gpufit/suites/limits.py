"""Throughput thresholds, judged the same way for every backend."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pytest_gpufit.measure import Spread
from pytest_gpufit.suites.context import Context

THROUGHPUT_LIMITS = (
    ("min_decode_tok_s", "decode_tok_s", "decode", "tok/s", False),
    ("min_prefill_tok_s", "prefill_tok_s", "prefill", "tok/s", False),
    ("max_ttft_ms", "ttft_ms", "time to first token", "ms", True),
)


def expect_throughput_limits(
    ctx: Context, params: Mapping[str, Any], stats: Mapping[str, Spread], how: Callable[[str], str]
) -> None:
    """The throughput thresholds a suite set, judged on medians; ``how`` says what was timed."""
    for key, metric, label, unit, is_max in THROUGHPUT_LIMITS:
        if key in params:
            value = stats[metric].median
            ok = value <= params[key] if is_max else value >= params[key]
            ctx.expect(
                ok,
                f"{label} {value:.1f} {unit} {'>' if is_max else '<'} {key} {params[key]:g} "
                f"({how(metric)})",
            )
