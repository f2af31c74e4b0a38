"""Memory sizes: parse what users write, format what they read.

A bare number is decimal gigabytes (10**9 bytes), the unit cards are sold in and the one
``torch.testing.largeTensorTest`` reads. Strings name their unit.
"""

from __future__ import annotations

import re

from pytest_gpufit.errors import GpufitError

GB = 10**9
GIB = 2**30

_FACTORS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
ACCEPTED_SIZES = (
    "a number of GB (10^9 bytes) or a string such as '80GB', '79GiB', '61440MiB', '1TB'"
)


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
        raise GpufitError(f"{what}: expected {ACCEPTED_SIZES}, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), "GB"
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise GpufitError(f"{what}: expected {ACCEPTED_SIZES}, got {value!r}")
        number, unit = float(match.group(1)), (match.group(2) or "GB").upper()
        if unit not in _FACTORS:
            known = ", ".join(k if "I" not in k else k.replace("I", "i") for k in _FACTORS)
            raise GpufitError(
                f"{what}: unknown unit {match.group(2)!r} in {value!r}; use one of {known}"
            )
    else:
        raise GpufitError(f"{what}: expected {ACCEPTED_SIZES}, got {value!r}")
    if number != number or number < 0 or number == float("inf"):
        raise GpufitError(f"{what}: must be a positive size, got {value!r}")
    return int(round(number * _FACTORS[unit]))


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


def parse_percent(value: object, what: str = "tolerance") -> float:
    """Return a fraction from a percentage string; a bare number is refused (5 or 5%?).

    >>> parse_percent("10%")
    0.1
    """
    fraction = -1.0
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            fraction = float(value.strip()[:-1]) / 100
        except ValueError:
            pass
    if not 0 <= fraction <= 100:  # up to 10000%: a tolerance that only records
        raise GpufitError(f"{what}: expected a percentage such as '10%', got {value!r}")
    return fraction
