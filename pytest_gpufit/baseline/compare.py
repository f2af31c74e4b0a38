"""Judging measurements against a baseline: metrics, tolerances, confirmation by re-measuring.

Everything here is pure: values in, verdicts out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpufit import metrics
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.numbers import format_number as format_number  # the one formatter, for fleet
from pytest_gpufit.units import parse_percent

# Views of the metric table (pytest_gpufit.metrics), for code that asks by name.
METRICS: dict[str, bool] = {m.name: m.higher_is_better for m in metrics.CHECK_METRICS}
LEVEL_METRICS: dict[str, bool] = {m.name: m.higher_is_better for m in metrics.LEVEL_METRICS}
METRIC_LABELS: dict[str, str] = {m.name: m.label for m in metrics.TABLE}
MISSING = ("fail", "warn")
MAX_CONFIRM = 20


@dataclass(frozen=True)
class BaselinePolicy:
    """A suite's ``baseline:`` keys: per-metric tolerances, what a missing check does, and how
    many extra runs confirm a regression before it fails."""

    tolerances: Mapping[str, float] = field(default_factory=dict)
    missing: str = "fail"
    confirm: int = 2


def parse_tolerances(raw: Any, where: str) -> dict[str, float]:
    """``{decode_tok_s: 5%, ...}`` -> fractions; unknown metrics and bare numbers are errors."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise GpufitError(f"{where}: expected a mapping of metric: percentage, got {raw!r}")
    out = {}
    for metric, value in raw.items():
        if metric not in metrics.BY_NAME:
            known = ", ".join(metrics.tolerance_names())
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


def metric_values(measured: Mapping[str, Any], where: str | None = None) -> dict[str, float]:
    """The baseline metrics of one check's measurements; NaN or infinity is an error.

    >>> metric_values({"decode_tok_s": 121.0, "peak_allocated_bytes": 10, "text": "hi"})
    {'decode_tok_s': 121.0, 'peak_memory': 10.0}
    """
    out = {}
    for metric in metrics.CHECK_METRICS:
        value = measured.get(metric.key)
        if value is None:
            continue
        if not is_number(value):
            raise GpufitError(f"{where or 'measured'}: {metric.key} is {value!r}, not a number")
        out[metric.name] = _measurement(metric.key, value, where, metric.label, metric.negative_ok)
    for key, value in measured.items():
        level, _ = metrics.split_level(key)
        if level is not None and is_number(value):
            out[key] = _measurement(key, value, where, key, False)
    return out


def base_metric(metric: str) -> str:
    """``c8_ttft_ms_p99`` -> ``ttft_ms_p99``; other names as they are.

    >>> base_metric("c8_ttft_ms_p99"), base_metric("r2.5_goodput"), base_metric("kl")
    ('ttft_ms_p99', 'goodput', 'kl')
    """
    return metrics.split_level(metric)[1]


def _metric(name: str) -> metrics.Metric:
    metric = metrics.find(name)
    if metric is None:
        raise GpufitError(
            f"{name!r} is not a metric; known: {', '.join(metrics.tolerance_names())}"
        )
    return metric


def higher_is_better(metric: str) -> bool:
    return _metric(metric).higher_is_better


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

    @property
    def _old_new(self) -> str:
        return f"{metrics.format_value(self.metric, self.old)} -> " + metrics.format_value(
            self.metric, self.new
        )

    def text(self) -> str:
        label = metrics.label(self.metric)
        confirmed = ""
        if len(self.runs) > 1:
            confirmed = f"; median of {len(self.runs)} runs"
        if self.spread:
            confirmed += f", spread {self.spread:.1%}"
        return (
            f"{label} {self._old_new}"
            f" ({self.change:+.1%}, tolerance {self.tolerance:.0%}{confirmed})"
        )

    def records_only(self) -> str | None:
        """A warning when the tolerance lets a higher-is-better metric fall to zero unfailed."""
        if not higher_is_better(self.metric) or self.tolerance < 1 or self.old <= 0:
            return None
        return (
            f"{metrics.label(self.metric)}: tolerance {self.tolerance:.0%} can never fail (it "
            f"cannot fall by more than 100%), so {self._old_new} passed "
            f"unjudged; lower baseline.tolerance.{self.metric} (or --gpufit-baseline-tolerance) "
            "to gate on it"
        )

    def noisy(self) -> str | None:
        """A warning when the tolerance is tighter than twice the measured spread."""
        if self.tolerance >= 2 * self.spread:
            return None
        return (
            f"{metrics.label(self.metric)}: tolerance {self.tolerance:.0%} is tighter than "
            f"twice the measured spread ({self.spread:.1%}), so the gate can flip on noise; widen "
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
    scale = max(abs(old), _metric(metric).floor)
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
