"""Memory sizes: parse what users write, format what they read.

A bare number is decimal gigabytes (10**9 bytes), the unit cards are sold in and the one
``torch.testing.largeTensorTest`` reads. Strings name their unit.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pytest_gpufit.errors import GpufitError

GB = 10**9
GIB = 2**30

# unit -> (bytes per unit, most integer digits): every size stays below 1000 TB (or TiB), so a
# typo such as 10**400 is refused with a message instead of overflowing.
_UNITS: dict[str, tuple[int, int]] = {
    "B": (1, 15),
    "KB": (10**3, 12),
    "MB": (10**6, 9),
    "GB": (10**9, 6),
    "TB": (10**12, 3),
    "KIB": (2**10, 12),
    "MIB": (2**20, 9),
    "GIB": (2**30, 6),
    "TIB": (2**40, 3),
}
_FACTORS = {unit: factor for unit, (factor, _) in _UNITS.items()}
# ASCII only: str.isdigit() and re's \d accept '²' and other Unicode digits that int() refuses.
_SIZE = re.compile(r"^ *([0-9]+(?:\.[0-9]*)?|\.[0-9]+) *([A-Za-z]*) *$")
ACCEPTED_SIZES = (
    "a number of GB (10^9 bytes) or a string such as '80GB', '79GiB', '61440MiB', '1TB'"
)
TOO_LARGE = "sizes stop below 1000 TB (1000 TiB); is it a typo?"


def shown(value: object) -> str:
    """``repr`` for messages, shortened: a 400-digit typo should not fill the screen.

    >>> shown(10**50)
    '100000000000000000000... (51 digits)'
    """
    text = repr(value)
    if len(text) <= 40:
        return text
    if isinstance(value, int):
        return f"{text[:21]}... ({len(text.lstrip('-'))} digits)"
    return f"{text[:37]}..."


def _spelled(unit: str) -> str:
    return unit.replace("I", "i")


def _digits(number: str) -> int:
    """Integer digits that count towards the cap (leading zeros do not)."""
    return len(number.partition(".")[0].lstrip("0"))


def parse_size(value: object, what: str = "size") -> int:
    """Return a memory size in bytes.

    >>> parse_size(80)
    80000000000
    >>> parse_size("79GiB")
    84825604096
    >>> parse_size("61440MiB") == 61440 * 2**20
    True
    """
    if isinstance(value, bool):
        raise GpufitError(f"{what}: expected {ACCEPTED_SIZES}, got {shown(value)}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise GpufitError(f"{what}: must be a finite size, got {value!r}")
        if value < 0:
            raise GpufitError(f"{what}: must be a positive size, got {value!r}")
        if value >= 10 ** _UNITS["GB"][1]:  # compared before float(): 10**400 overflows it
            raise GpufitError(f"{what}: {shown(value)} GB is too large; {TOO_LARGE}")
        return int(round(float(value) * GB))
    if not isinstance(value, str):
        raise GpufitError(f"{what}: expected {ACCEPTED_SIZES}, got {shown(value)}")
    match = _SIZE.match(value)
    if not match:
        raise GpufitError(f"{what}: expected {ACCEPTED_SIZES}, got {shown(value)}")
    number, unit = match.group(1), (match.group(2) or "GB").upper()
    if unit not in _UNITS:
        known = ", ".join(_spelled(k) for k in _UNITS)
        raise GpufitError(
            f"{what}: unknown unit {match.group(2)!r} in {value!r}; use one of {known}"
        )
    factor, max_digits = _UNITS[unit]
    if _digits(number) > max_digits:
        raise GpufitError(f"{what}: {shown(value)} is too large; {TOO_LARGE}")
    return int(round(float(number) * factor))


def _any_case(text: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in text)


def size_json_schema() -> dict[str, Any]:
    """The JSON Schema of what ``parse_size`` accepts (generated, so the two cannot drift)."""
    forms = [f"0*[0-9]{{1,{_UNITS['GB'][1]}}}(\\.[0-9]*)?|0*\\.[0-9]+"]  # bare: GB
    for unit, (_, digits) in _UNITS.items():
        number = f"0*[0-9]{{1,{digits}}}(\\.[0-9]*)?|0*\\.[0-9]+"
        forms.append(f"({number}) *{_any_case(unit)}")
    return {
        "oneOf": [
            {"type": "number", "minimum": 0, "exclusiveMaximum": 10 ** _UNITS["GB"][1]},
            {"type": "string", "pattern": "^ *(" + "|".join(f"({f})" for f in forms) + ") *$"},
        ],
        "description": "a bare number is GB (10^9 bytes); or '80GB', '79GiB', '61440MiB'; "
        "below 1000 TB",
    }


def format_gb(n_bytes: int | float) -> str:
    """Format bytes as decimal GB: one decimal, none for a whole number of GB.

    >>> format_gb(85520809984), format_gb(60 * 10**9)
    ('85.5 GB', '60 GB')
    """
    if n_bytes % GB == 0:
        return f"{int(n_bytes // GB)} GB"
    return f"{n_bytes / GB:.1f} GB"


def format_gib(n_bytes: int | float) -> str:
    """Format bytes as GiB, one decimal.

    >>> format_gib(85520809984)
    '79.6 GiB'
    """
    return f"{n_bytes / GIB:.1f} GiB"


_PERCENT = re.compile(r"^ *(0*(?:[0-9]{1,4}(?:\.[0-9]*)?|10000(?:\.0*)?)|0*\.[0-9]+) *% *$")
_PERCENT_SHAPE = re.compile(r"^ *[0-9]+(?:\.[0-9]*)? *% *$")


def parse_percent(value: object, what: str = "tolerance") -> float:
    """Return a fraction from a percentage string; a bare number is refused (5 or 5%?).

    Up to 10000%: a tolerance that only records.

    >>> parse_percent("10%")
    0.1
    """
    match = _PERCENT.match(value) if isinstance(value, str) else None
    if not match:
        shape = _PERCENT_SHAPE.match(value) if isinstance(value, str) else None
        if shape:
            raise GpufitError(
                f"{what}: expected a percentage up to 10000% (a tolerance that only records), "
                f"got {value!r}"
            )
        raise GpufitError(f"{what}: expected a percentage such as '10%', got {value!r}")
    return float(match.group(1)) / 100


def percent_json_schema() -> dict[str, Any]:
    """The JSON Schema of what ``parse_percent`` accepts."""
    return {"type": "string", "pattern": _PERCENT.pattern.replace("(?:", "(")}
