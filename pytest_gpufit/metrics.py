"""The metrics gpufit keeps and judges: one table, read by every part that names a metric.

A ``Metric`` says how a figure is named in a baseline (and in ``baseline.tolerance``), under
which key a check measures it, how people read it (label, unit, formatter), which way is better,
and the floor its changes are measured against. Baseline comparison, the reports, the CLI, the
plot and the served load levels all read this table; adding a metric is one entry in ``TABLE``
(and its test).

Metrics of a served load level (``per_level``) are a family: one figure per level, stored as
``c8_ttft_ms_p99`` (concurrency 8) or ``r2_goodput`` (2 requests/s); their ``source`` is the
level's figure under vLLM's benchmark name (``p99_ttft_ms``).

This module is a leaf: the standard library and the small pure ``numbers`` and ``units`` only,
so execution code (``serving/load.py``) may read it as well as the reports.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.numbers import format_number, format_percent
from pytest_gpufit.units import GB


def format_bytes(value: float) -> str:
    """Bytes as decimal GB, to three significant figures (a tiny model's 0.6 MB stays legible).

    >>> format_bytes(61_234_567_890), format_bytes(612_345), format_bytes(60e9)
    ('61.2 GB', '0.000612 GB', '60 GB')
    """
    return f"{format_number(value / GB)} GB"


def format_share(value: float) -> str:
    """A share (0 to 1) as a percentage.

    >>> format_share(0.953), format_share(1.0)
    ('95.3%', '100%')
    """
    return format_percent(value)


@dataclass(frozen=True)
class Metric:
    """One metric: its name in a baseline, how it is measured, read and judged."""

    name: str  # the baseline's name and the key of baseline.tolerance
    label: str  # how people read it, unit included where the formatter does not print one
    unit: str  # tok/s, ms, s, bytes, share, nats ...
    higher_is_better: bool
    source: str = ""  # the key a check measures it under, where that is not ``name``
    floor: float = 0.0  # changes are relative to max(|baseline|, floor): KL near 0 is noise
    negative_ok: bool = False  # KL may round to a hair below zero; no rate or size can
    per_level: bool = False  # one figure per served load level (c8_..., r2_...)
    formatter: Callable[[float], str] = format_number

    @property
    def key(self) -> str:
        """The key of the measured figure: ``source``, or the name itself."""
        return self.source or self.name

    def format(self, value: float) -> str:
        """The value as every output prints this metric."""
        return self.formatter(value)


# In the order the suite schema lists tolerance keys: check metrics, then the level family.
TABLE: tuple[Metric, ...] = (
    Metric("decode_tok_s", "decode tok/s", "tok/s", True),
    Metric("prefill_tok_s", "prefill tok/s", "tok/s", True),
    Metric("ttft_ms", "TTFT ms", "ms", False),
    Metric("load_seconds", "load s", "s", False),
    Metric(
        "peak_memory",
        "peak memory",
        "bytes",
        False,
        source="peak_allocated_bytes",
        formatter=format_bytes,
    ),
    Metric("kl", "KL", "nats", False, floor=1e-3, negative_ok=True),
    Metric("top1_agreement", "top-1 agreement", "share", True, formatter=format_share),
    Metric("allreduce_busbw_gb_s", "all-reduce bus bandwidth GB/s", "GB/s", True),  # allreduce.py
    Metric("allreduce_latency_us", "all-reduce latency us", "us", False),
    Metric("ttft_ms_p50", "TTFT p50 ms", "ms", False, source="median_ttft_ms", per_level=True),
    Metric("ttft_ms_p99", "TTFT p99 ms", "ms", False, source="p99_ttft_ms", per_level=True),
    Metric("itl_ms_p99", "ITL p99 ms", "ms", False, source="p99_itl_ms", per_level=True),
    Metric("goodput", "goodput", "share", True, per_level=True, formatter=format_share),
    Metric(
        "output_tok_s", "output tok/s", "tok/s", True, source="output_throughput", per_level=True
    ),
)
BY_NAME: Mapping[str, Metric] = {m.name: m for m in TABLE}
CHECK_METRICS: tuple[Metric, ...] = tuple(m for m in TABLE if not m.per_level)
LEVEL_METRICS: tuple[Metric, ...] = tuple(m for m in TABLE if m.per_level)
_LEVEL = re.compile(
    r"^(c[0-9]+|r[0-9.e+-]+)_(" + "|".join(re.escape(m.name) for m in LEVEL_METRICS) + r")$"
)


def split_level(name: str) -> tuple[str | None, str]:
    """``c8_ttft_ms_p99`` -> (``c8``, ``ttft_ms_p99``); a name of no level -> (None, name).

    >>> split_level("c8_ttft_ms_p99"), split_level("r2.5_goodput"), split_level("kl")
    (('c8', 'ttft_ms_p99'), ('r2.5', 'goodput'), (None, 'kl'))
    """
    match = _LEVEL.match(name)
    return (match.group(1), match.group(2)) if match else (None, name)


def find(name: str) -> Metric | None:
    """The metric of a stored name (a level's figure gives its family's entry); None if unknown.

    >>> find("c8_goodput").label, find("decode_tok_s").unit, find("speed")
    ('goodput', 'tok/s', None)
    """
    level, base = split_level(name)
    metric = BY_NAME.get(base)
    if metric is None or metric.per_level != (level is not None):
        return None
    return metric


def label(name: str) -> str:
    """How people read a stored metric name; an unknown name as it is.

    >>> label("decode_tok_s"), label("c8_ttft_ms_p99"), label("r2_goodput"), label("x")
    ('decode tok/s', 'concurrency 8 TTFT p99 ms', 'rate 2/s goodput', 'x')
    """
    metric = find(name)
    if metric is None:
        return name
    level, _ = split_level(name)
    if level is None:
        return metric.label
    if level.startswith("c"):
        return f"concurrency {level[1:]} {metric.label}"
    return f"rate {level[1:]}/s {metric.label}"


def format_value(name: str, value: float) -> str:
    """A value of a stored metric as every output prints it; an unknown name as a number.

    >>> format_value("decode_tok_s", 14230.4), format_value("peak_memory", 8.1e9)
    ('14,230', '8.1 GB')
    >>> format_value("c1_goodput", 0.5), format_value("kl", 3e-6)
    ('50%', '0.000003')
    """
    metric = find(name)
    return metric.format(value) if metric is not None else format_number(value)


def tolerance_names() -> list[str]:
    """Every name ``baseline.tolerance`` accepts (a level metric's bare name covers each level).

    >>> tolerance_names()[:2], tolerance_names()[-1]
    (['decode_tok_s', 'prefill_tok_s'], 'output_tok_s')
    """
    return [m.name for m in TABLE]


def level_figures(level: str, figures: Mapping[str, float], digits: int = 4) -> dict[str, float]:
    """The baseline metrics of one served load level (``c8``), from its vLLM-named figures.

    >>> level_figures("c8", {"p99_ttft_ms": 12.345678, "goodput": 1.0, "request_goodput": 3.0})
    {'c8_ttft_ms_p99': 12.3457, 'c8_goodput': 1.0}
    """
    return {
        f"{level}_{m.name}": round(figures[m.key], digits)
        for m in LEVEL_METRICS
        if m.key in figures
    }


def non_finite(value: Any, path: str = "") -> list[str]:
    """``name = value`` for every NaN or infinite number in ``value``, nested ones included.

    >>> non_finite({"kl": float("nan"), "ok": 1.0, "golden": {"lp": [[0.0, float("-inf")]]}})
    ['kl = nan', 'golden.lp[0][1] = -inf']
    """
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path} = {value}"]
    if isinstance(value, dict):
        return [b for k, v in value.items() for b in non_finite(v, f"{path}.{k}" if path else k)]
    if isinstance(value, (list, tuple)):
        return [b for i, v in enumerate(value) for b in non_finite(v, f"{path}[{i}]")]
    return []


def nulled(value: Any) -> Any:
    """``value`` as strict JSON holds it: every NaN or infinity, nested ones included, as None
    (tuples become lists). The NaN has already failed its check; a report stays valid JSON.

    >>> nulled({"kl": float("nan"), "levels": (1.0, {"p99": float("inf")})})
    {'kl': None, 'levels': [1.0, {'p99': None}]}
    """
    return json.loads(json.dumps(value), parse_constant=lambda _: None)
