"""The kinds of value a suite field takes (the shared ones, and what a kind is, are in
``pytest_gpufit/declared/values.py``): each reads one YAML value into a Python value (or raises
a GpufitError saying what was expected) and carries the JSON Schema of what it accepts, so
``schema.json`` is generated from the same tables the validator reads
(``pytest_gpufit/suites/json_schema.py``).

>>> positive_int(5.0), seconds("90s"), choice(("fp32", "golden"))("golden")
(5, 90.0, 'golden')
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pytest_gpufit.declared.records import closest
from pytest_gpufit.declared.values import Kind as Kind
from pytest_gpufit.declared.values import boolean as boolean
from pytest_gpufit.declared.values import choice as choice
from pytest_gpufit.declared.values import kind as kind
from pytest_gpufit.declared.values import text as text
from pytest_gpufit.declared.values import whole_numbers
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.units import (
    parse_percent,
    parse_size,
    percent_json_schema,
    shown,
    size_json_schema,
)

NUMBER_LIMIT = 1e100  # thresholds are finite and below this
MAX_REPEATS = 1000  # throughput repeats and warmup runs
MAX_TOKENS = 10_000_000  # prompt, new tokens, context
MAX_BATCH = 100_000
MAX_SEED = 2**32 - 1


def whole(value: Any) -> Any:
    """JSON (and JSON Schema's ``integer``) counts 5.0 as the whole number 5."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


int_kind = whole_numbers  # the name check kinds have used
positive_int = whole_numbers(1, MAX_TOKENS)
non_negative_int = whole_numbers(0, MAX_SEED)
repeats = whole_numbers(1, MAX_REPEATS, " runs").described(f"timed runs, at most {MAX_REPEATS}")
warmup = whole_numbers(0, MAX_REPEATS, " runs").described(
    f"untimed runs first, at most {MAX_REPEATS}"
)
batch = whole_numbers(1, MAX_BATCH)
# A served check's prompts: each request its own (a prefix cache or an answer cache cannot
# serve one from another's work), or one prompt again on purpose (a cache-hit workload).
prompts = choice(("unique", "shared"), "unique or shared").described(
    "unique (default): each request a prompt of its own, of the same length; shared: one "
    "prompt again and again (a server's prefix cache answers every prefill after the first)"
)

# YAML 1.1 reads ``1e9`` as text: accept text that is a positive number below NUMBER_LIMIT
# (a plain decimal of up to 100 digits, or d.ddde[+-]NN), ASCII digits only.
POSITIVE_TEXT = (
    r"^ *(0*[1-9][0-9]{0,99}(\.[0-9]*)?|0*\.0*[1-9][0-9]*"
    r"|([1-9](\.[0-9]*)?|0?\.0*[1-9][0-9]*)[eE][+-]?[0-9]{1,2}) *$"
)
POSITIVE_NUMBER_SCHEMA = {
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": NUMBER_LIMIT},
        {"type": "string", "pattern": POSITIVE_TEXT},
    ]
}


def finite(value: Any) -> float:
    """A real number (not a bool), finite and below NUMBER_LIMIT in size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GpufitError(f"expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise GpufitError(f"expected a finite number, got {value!r}")
    if abs(value) >= NUMBER_LIMIT:  # before float(): a 400-digit int overflows it
        raise GpufitError(f"expected a number below 1e100, got {shown(value)}")
    return float(value)


def _positive(value: Any) -> float:
    if isinstance(value, str):
        if not re.fullmatch(POSITIVE_TEXT, value):
            raise GpufitError(f"expected a number > 0, got {value!r}")
        return float(value)
    number = finite(value)
    if number <= 0:
        raise GpufitError(f"expected a number > 0, got {value!r}")
    return number


positive_number = kind(POSITIVE_NUMBER_SCHEMA)(_positive)


@kind({"type": "number", "minimum": 0, "maximum": 1})
def fraction(value: Any) -> float:
    number = finite(value) if not isinstance(value, str) else -1.0
    if not 0 <= number <= 1:
        raise GpufitError(f"expected a number from 0 to 1, got {value!r}")
    return number


@kind({"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1})
def token_list(value: Any) -> list[int]:
    value = [whole(v) for v in value] if isinstance(value, list) else value
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise GpufitError(f"expected a list of token ids, got {value!r}")
    return list(value)


_SECONDS_TEXT = POSITIVE_TEXT.replace(") *$", ") *s? *$")


@kind(
    {
        "oneOf": [
            POSITIVE_NUMBER_SCHEMA["oneOf"][0],
            {"type": "string", "pattern": _SECONDS_TEXT},
        ],
        "description": "seconds: a number, or text such as '90s'",
    }
)
def seconds(value: Any) -> float:
    if isinstance(value, str):
        if not re.fullmatch(_SECONDS_TEXT, value):
            raise GpufitError(f"expected seconds such as 90 or '90s', got {value!r}")
        return float(value.strip().removesuffix("s"))
    return _positive(value)


@kind(size_json_schema())
def size(value: Any) -> int:
    return parse_size(value, "size")


@kind(percent_json_schema())
def percent(value: Any) -> float:
    return parse_percent(value, "percentage")


MAX_CONCURRENCY = 100_000


@kind(
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY},
        "minItems": 1,
    }
)
def levels(value: Any) -> list[int]:
    """Concurrency levels: whole numbers from 1, in the order given."""
    items = [whole(v) for v in value] if isinstance(value, list) else value
    if (
        not isinstance(items, list)
        or not items
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_CONCURRENCY
            for v in items
        )
    ):
        raise GpufitError(f"expected a list of concurrencies such as [1, 8, 32], got {value!r}")
    return list(items)


@kind({"type": "array", "items": POSITIVE_NUMBER_SCHEMA, "minItems": 1})
def rates(value: Any) -> list[float]:
    """Request rates in requests/s (Poisson arrivals)."""
    if not isinstance(value, list) or not value:
        raise GpufitError(f"expected a list of request rates such as [2, 5], got {value!r}")
    return [_positive(v) for v in value]


SLO_METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_STATS = ("p50", "p90", "p99")
SLO_KEYS = tuple(f"{m}_ms_{q}" for m in SLO_METRICS for q in SLO_STATS)


@kind(
    {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {key: POSITIVE_NUMBER_SCHEMA for key in SLO_KEYS},
        "description": "per level: a percentile in ms must stay at or below its value",
    }
)
def slo(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise GpufitError(f"expected a mapping such as {{ttft_ms_p99: 2000}}, got {value!r}")
    out = {}
    for key, bound in value.items():
        if key not in SLO_KEYS:
            hint = closest(key, SLO_KEYS)
            did_you_mean = f"did you mean {hint!r}? " if hint else ""
            raise GpufitError(
                f"unknown SLO {key!r}; {did_you_mean}(accepted: {', '.join(SLO_KEYS)})"
            )
        try:
            out[str(key)] = _positive(bound)
        except GpufitError as error:
            raise GpufitError(f"{key}: {error}") from None
    return out
