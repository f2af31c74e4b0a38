"""Judging measurements against a baseline: metrics, tolerances, confirmation by re-measuring.

Everything here is pure: values in, verdicts out.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.units import parse_percent

# metric -> True when higher is better
METRICS: dict[str, bool] = {
    "decode_tok_s": True,
    "prefill_tok_s": True,
    "ttft_ms": False,
    "load_seconds": False,
    "peak_memory": False,
    "kl": False,
    "top1_agreement": True,
    "allreduce_busbw_gb_s": True,  # pytest_gpufit.allreduce
    "allreduce_latency_us": False,
}
# Per load level, stored as ``c8_ttft_ms_p99`` (concurrency 8) or ``r2_goodput`` (2 req/s);
# a tolerance given for the bare name applies to every level.
LEVEL_METRICS: dict[str, bool] = {
    "ttft_ms_p50": False,
    "ttft_ms_p99": False,
    "itl_ms_p99": False,
    "goodput": True,
    "output_tok_s": True,
}
_LEVEL = re.compile(r"^(c[0-9]+|r[0-9.e+-]+)_(" + "|".join(LEVEL_METRICS) + r")$")
METRIC_SOURCES = {"peak_memory": "peak_allocated_bytes"}
_FLOORS = {"kl": 1e-3}
METRIC_LABELS = {
    "decode_tok_s": "decode tok/s",
    "prefill_tok_s": "prefill tok/s",
    "ttft_ms": "TTFT ms",
    "load_seconds": "load s",
    "peak_memory": "peak memory",
    "kl": "KL",
    "top1_agreement": "top-1 agreement",
    "allreduce_busbw_gb_s": "all-reduce bus bandwidth GB/s",
    "allreduce_latency_us": "all-reduce latency us",
    "ttft_ms_p50": "TTFT p50 ms",
    "ttft_ms_p99": "TTFT p99 ms",
    "itl_ms_p99": "ITL p99 ms",
    "goodput": "goodput",
    "output_tok_s": "output tok/s",
}
MISSING = ("fail", "warn")
MAX_CONFIRM = 20


@dataclass(frozen=True)
class BaselinePolicy:
    """A suite's ``baseline:`` keys: per-metric tolerances, what a missing check does, and how
    many extra runs confirm a regression before it fails."""

    tolerances: Mapping[str, float] = field(default_factory=dict)
    missing: str = "fail"
    confirm: int = 2


def format_number(value: float) -> str:
    """A number as people write it in a baseline text.

    >>> format_number(14230.4), format_number(1e6), format_number(14.53), format_number(3e-6)
    ('14,230', '1,000,000', '14.53', '3e-06')
    """
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def parse_tolerances(raw: Any, where: str) -> dict[str, float]:
    """``{decode_tok_s: 5%, ...}`` -> fractions; unknown metrics and bare numbers are errors."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise GpufitError(f"{where}: expected a mapping of metric: percentage, got {raw!r}")
    out = {}
    for metric, value in raw.items():
        if metric not in METRICS and metric not in LEVEL_METRICS:
            known = ", ".join([*METRICS, *LEVEL_METRICS])
            raise GpufitError(f"{where}: unknown metric {metric!r}; known: {known}")
        out[str(metric)] = parse_percent(value, f"{where}.{metric}")
    return out


def parse_missing(raw: Any, where: str) -> str:
    """``baseline: {missing: warn}``: what a check the accepted baseline lacks does."""
    if raw not in MISSING:
        raise GpufitError(f"{where}: expected fail or warn, got {raw!r}")
    return str(raw)


def parse_confirm(raw: Any, where: str) -> int:
    """``baseline: {confirm: N}``: extra runs that must confirm a regression (0 to 20)."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_CONFIRM:
        raise GpufitError(f"{where}: expected a whole number from 0 to {MAX_CONFIRM}, got {raw!r}")
    return raw


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _measurement(
    source: str, value: float, where: str | None, label: str, negative_ok: bool
) -> float:
    """A stored or measured figure as a float; what cannot be a measurement is an error."""
    try:
        number = float(value)
    except OverflowError:  # a 400-digit integer in a record
        raise GpufitError(
            f"{where or 'measured'}: {source} is too large to be a measurement"
        ) from None
    if not math.isfinite(number):
        raise GpufitError(
            f"{where or 'measured'}: {source} is {value!r}; a NaN or infinite value can "
            "never be compared, so it fails"
        )
    # A negative rate or size cannot be measured, and as a baseline it would pass any
    # run (every rate beats -1 tok/s).
    if number < 0 and not negative_ok:
        raise GpufitError(
            f"{where or 'measured'}: {source} is {value!r}; a negative {label} cannot be "
            "measured, so it is never compared"
        )
    return number


def metric_values(metrics: Mapping[str, Any], where: str | None = None) -> dict[str, float]:
    """The baseline metrics of one check's measurements; NaN or infinity is an error.

    >>> metric_values({"decode_tok_s": 121.0, "peak_allocated_bytes": 10, "text": "hi"})
    {'decode_tok_s': 121.0, 'peak_memory': 10.0}
    """
    out = {}
    for metric in METRICS:
        source = METRIC_SOURCES.get(metric, metric)
        value = metrics.get(source)
        if value is None:
            continue
        if not is_number(value):
            raise GpufitError(f"{where or 'measured'}: {source} is {value!r}, not a number")
        # KL may round to a hair below zero; no other metric can be negative.
        out[metric] = _measurement(source, value, where, METRIC_LABELS[metric], metric == "kl")
    for key, value in metrics.items():
        if _LEVEL.match(key) and is_number(value):
            out[key] = _measurement(key, value, where, key, False)
    return out


def base_metric(metric: str) -> str:
    """``c8_ttft_ms_p99`` -> ``ttft_ms_p99``; other names as they are.

    >>> base_metric("c8_ttft_ms_p99"), base_metric("r2.5_goodput"), base_metric("kl")
    ('ttft_ms_p99', 'goodput', 'kl')
    """
    match = _LEVEL.match(metric)
    return match.group(2) if match else metric


def higher_is_better(metric: str) -> bool:
    base = base_metric(metric)
    return METRICS[base] if base in METRICS else LEVEL_METRICS[base]


@dataclass(frozen=True)
class Comparison:
    """One metric of one check against its baseline."""

    metric: str
    old: float
    new: float  # the median of ``runs``
    change: float  # relative, new vs old
    tolerance: float
    verdict: str  # ok | worse | better
    runs: tuple[float, ...] = ()
    spread: float = 0.0  # relative spread of ``runs`` (or the check's own repeats)

    def text(self) -> str:
        label = METRIC_LABELS.get(self.metric, self.metric)
        base = base_metric(self.metric)
        if base != self.metric:
            level = self.metric[: -len(base) - 1]
            kind = "concurrency" if level.startswith("c") else "rate"
            label = f"{kind} {level[1:]}{'/s' if kind == 'rate' else ''} {METRIC_LABELS[base]}"
        confirmed = ""
        if len(self.runs) > 1:
            confirmed = f"; median of {len(self.runs)} runs"
        if self.spread:
            confirmed += f", spread {self.spread:.1%}"
        return (
            f"{label} {format_number(self.old)} -> {format_number(self.new)} "
            f"({self.change:+.1%}, tolerance {self.tolerance:.0%}{confirmed})"
        )

    def records_only(self) -> str | None:
        """A warning when the tolerance lets a higher-is-better metric fall to zero unfailed."""
        if not higher_is_better(self.metric) or self.tolerance < 1 or self.old <= 0:
            return None
        label = METRIC_LABELS.get(self.metric, self.metric)
        return (
            f"{label}: tolerance {self.tolerance:.0%} can never fail (it cannot fall by more "
            f"than 100%), so {format_number(self.old)} -> {format_number(self.new)} passed "
            f"unjudged; lower baseline.tolerance.{self.metric} (or --gpufit-baseline-tolerance) "
            "to gate on it"
        )

    def noisy(self) -> str | None:
        """A warning when the tolerance is tighter than twice the measured spread."""
        if self.tolerance >= 2 * self.spread:
            return None
        label = METRIC_LABELS.get(self.metric, self.metric)
        return (
            f"{label}: tolerance {self.tolerance:.0%} is tighter than twice the measured spread "
            f"({self.spread:.1%}), so the gate can flip on noise; widen "
            f"baseline.tolerance.{self.metric} or measure with more repeats"
        )


def relative_spread(values: Sequence[float]) -> float:
    """(max - min) / |median|; 0 for a single value.

    >>> relative_spread([98.0, 100.0, 104.0])
    0.06
    """
    if len(values) < 2:
        return 0.0
    middle = abs(statistics.median(values))
    return (max(values) - min(values)) / middle if middle else 0.0


def judge(
    metric: str, old: float, values: Sequence[float], tolerance: float, spread: float = 0.0
) -> Comparison:
    """The verdict on the median of ``values`` (one run, or a run and its confirmations).

    >>> judge("decode_tok_s", 100.0, [50.0], 0.05).verdict
    'worse'
    >>> judge("decode_tok_s", 100.0, [50.0, 99.0, 101.0], 0.05).verdict
    'ok'
    """
    new = float(statistics.median(values))
    # KL near zero is noise relative to itself: measure its change against a floor.
    scale = max(abs(old), _FLOORS.get(metric, 0.0))
    if scale == 0:
        change = 0.0 if new == 0 else math.copysign(math.inf, new)
    else:
        change = (new - old) / scale
    gain = change if higher_is_better(metric) else -change
    verdict = "worse" if gain < -tolerance else "better" if gain > tolerance else "ok"
    return Comparison(
        metric,
        old,
        new,
        change,
        tolerance,
        verdict,
        tuple(values),
        max(spread, relative_spread(values)),
    )


def compare(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    tolerances: Mapping[str, float],
    default_tolerance: float,
    where_old: str | None = None,
) -> list[Comparison]:
    """Compare two measurement dicts metric by metric, each in its own direction.

    A NaN or infinite value on either side is a GpufitError, never a pass.
    """
    before = metric_values(old, where_old or "baseline")
    after = metric_values(new)
    out = []
    for metric, new_value in after.items():
        if metric not in before:
            continue
        own = new.get(f"{metric}_spread")
        spread = float(own) if isinstance(own, (int, float)) and math.isfinite(own) else 0.0
        tolerance = tolerances.get(metric, tolerances.get(base_metric(metric), default_tolerance))
        out.append(judge(metric, before[metric], [new_value], tolerance, spread))
    return out


def confirm(first: Comparison, more: Sequence[float]) -> Comparison:
    """Re-judge a regression on the median of the first value and ``more`` re-measurements.

    >>> c = judge("decode_tok_s", 100.0, [50.0], 0.05)
    >>> confirm(c, [97.0, 99.0]).verdict, confirm(c, [60.0, 55.0]).verdict
    ('ok', 'worse')
    """
    return judge(first.metric, first.old, [first.new, *more], first.tolerance, first.spread)
