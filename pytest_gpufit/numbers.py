"""Numbers and counts as people write them: ``1,000,000 tok/s``, ``0.0123``, ``1 GPU``."""

from __future__ import annotations

import math


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
