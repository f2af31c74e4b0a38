"""Numbers and counts as people write them: ``1,000,000 tok/s``, ``0.0123``, ``1 GPU``; and
the one parser of a whole number a user gives (a marker argument, an option, a YAML field)."""

from __future__ import annotations

import math

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.units import shown

MAX_DIGITS = 100  # of a whole number given as text: int() of thousands of digits is refused


def parse_whole(
    value: object,
    what: str = "",
    *,
    minimum: int = 1,
    maximum: int | None = None,
    unit: str = "",
    text: bool = False,
    say_range: bool = False,
) -> int:
    """A whole number from ``minimum`` (to ``maximum``: a cap that turns a typo such as 10**12
    into a message); a bad one raises an error that starts with ``what``.

    Whole means an int, or a float with no fraction (JSON and JSON Schema's ``integer`` count
    5.0 as 5); never a bool. ``text=True`` also reads ASCII digits (an option, an environment
    variable, an ini value: ``int('²')`` would crash). ``say_range`` names the whole range in
    the first message (suite files), ``unit`` follows the numbers in messages.

    >>> parse_whole(2.0, "count"), parse_whole("8", "--batch", text=True)
    (2, 8)
    >>> parse_whole(0, "requires_gpu count")
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: requires_gpu count: expected a whole number >= 1, got 0
    >>> parse_whole(5000, maximum=1000, unit=" runs", say_range=True)
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: expected at most 1,000 runs, got 5000
    """
    prefix = f"{what}: " if what else ""
    number = value
    if text and isinstance(value, str) and value.isascii() and value.isdigit():
        if len(value.lstrip("0")) > MAX_DIGITS:
            cap = f"{maximum:,}{unit}" if maximum is not None else f"{MAX_DIGITS} digits"
            raise GpufitError(f"{prefix}expected at most {cap}, got {shown(value)}")
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
        if say_range and maximum is not None:
            wanted = f"from {minimum} to {maximum:,}{unit}"
        else:
            wanted = f">= {minimum}{unit}"
        raise GpufitError(f"{prefix}expected a whole number {wanted}, got {shown(value)}")
    if maximum is not None and number > maximum:
        raise GpufitError(f"{prefix}expected at most {maximum:,}{unit}, got {shown(value)}")
    return number


def format_number(value: float, digits: int = 3) -> str:
    """Format a number for reading: thousands separators, ``digits`` significant figures below
    1,000, never an exponent, no trailing zeros.

    >>> format_number(1_000_000), format_number(1e6), format_number(14230.4)
    ('1,000,000', '1,000,000', '14,230')
    >>> format_number(1234.5), format_number(123.4), format_number(12.5), format_number(0.0123)
    ('1,234', '123', '12.5', '0.0123')
    >>> format_number(12.0), format_number(1.5), format_number(-0.000012345), format_number(0)
    ('12', '1.5', '-0.0000123', '0')
    >>> format_number(float("nan")), format_number(float("-inf"))
    ('NaN', '-inf')
    """
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    # Whole units from the magnitude where the digits run out: 14,230 not 14,230.4.
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_percent(fraction: float, signed: bool = False, digits: int = 3) -> str:
    """Format a fraction as a percentage; ``signed`` shows ``+`` on a rise.

    >>> format_percent(0.05), format_percent(-0.123, signed=True), format_percent(120.0)
    ('5%', '-12.3%', '12,000%')
    >>> format_percent(0.0, signed=True)
    '+0%'
    """
    text = format_number(fraction * 100, digits)
    if signed and not text.startswith("-") and text != "NaN":
        text = "+" + text
    return text + "%"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one.

    >>> plural(1, "gated test"), plural(2, "gated test"), plural(0, "GPU"), plural(1, "GPU")
    ('1 gated test', '2 gated tests', '0 GPUs', '1 GPU')
    >>> plural(1200, "reason"), plural(2, "match", "matches")
    ('1,200 reasons', '2 matches')
    """
    word = noun if count == 1 else (plural_form or noun + "s")
    return f"{format_number(count)} {word}"


def short_tokens(n: int) -> str:
    """A token count as tables show it: whole thousands of 1,024 as ``k``.

    >>> short_tokens(40960), short_tokens(1000)
    ('40k', '1000')
    """
    return f"{n // 1024}k" if n >= 1024 else str(n)
