"""Human-readable results: the terminal table of suite measurements."""

from __future__ import annotations

from typing import Any

from pytest_gpufit.units import format_gb

COLUMNS = (
    "target",
    "dtype",
    "device",
    "est total",
    "load s",
    "peak / est weights",
    "prefill tok/s",
    "decode tok/s (% ceiling)",
    "TTFT ms",
)


def _target_row(rows: list[dict[str, Any]]) -> list[str]:
    merged: dict[str, Any] = {}
    for row in rows:
        merged.update(row)

    def get(key: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(merged[key]) if key in merged else "-"

    peak = "-"
    if "peak_allocated_bytes" in merged:
        peak = format_gb(merged["peak_allocated_bytes"])
        if "estimate_weights_bytes" in merged:
            peak += f" / {format_gb(merged['estimate_weights_bytes'])}"
    decode = get("decode_tok_s", "{:.1f}")
    if "decode_pct_of_ceiling" in merged:
        decode += f" ({merged['decode_pct_of_ceiling']:.0f}%)"
    total = format_gb(merged["estimate_total_bytes"]) if "estimate_total_bytes" in merged else "-"
    return [
        f"{merged['suite']}::{merged['target']}",
        merged["dtype"],
        merged["device"],
        total,
        get("load_seconds"),
        peak,
        get("prefill_tok_s", "{:.0f}"),
        decode,
        get("ttft_ms", "{:.1f}"),
    ]


def measurement_table(measurements: dict[str, dict[str, Any]]) -> list[str]:
    """One row per target, merging the measurements of its checks."""
    by_target: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in measurements.values():
        by_target.setdefault((row["suite"], row["target"]), []).append(row)
    body = [_target_row(rows) for rows in by_target.values()]
    widths = [max(len(r[i]) for r in [list(COLUMNS), *body]) for i in range(len(COLUMNS))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(COLUMNS), *body]
    ]
