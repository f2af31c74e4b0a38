"""What sessions report: the header, the terminal summaries, the JSON report, Markdown."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from pytest_gpufit.hardware.records import Inventory
from pytest_gpufit.requirements import Verdict
from pytest_gpufit.units import format_gb, format_gib


def inventory_lines(inventory: Inventory) -> list[str]:
    """One line per GPU (or why there is none), for the report header and expect errors."""
    if not inventory.gpus:
        return [f"no GPU: {inventory.reason or 'none found'}"]
    env = inventory.environment
    versions = ""
    if not inventory.simulated:
        versions = f", driver {env.driver_version or '?'}, CUDA {env.cuda_driver_version or '?'}"
    lines = []
    for g in inventory.gpus:
        memory = f"{format_gb(g.memory_total_bytes)} ({format_gib(g.memory_total_bytes)})"
        sim = f" [simulated {g.catalog_id}]" if g.simulated else ""
        lines.append(f"{g.label}, {memory}, CC {g.cc_text}{versions}{sim}")
    return lines + [f"warning: {w}" for w in inventory.warnings]


def summary_lines(inventory: Inventory, verdicts: dict[str, Verdict]) -> list[str]:
    """Per card: how many gated tests run (or would, simulated) and why the rest do not."""
    if not verdicts:
        return []
    verb = "would run" if inventory.simulated else "ran"
    ok = [v for v in verdicts.values() if v.ok]
    lines = [
        f"gpufit: {len(ok)} of {len(verdicts)} gated tests {verb}"
        + (" (simulated)" if inventory.simulated else "")
    ]
    for g in inventory.gpus:
        on_card = sum(1 for v in ok if g.index in v.devices)
        name = g.catalog_id or g.name
        lines.append(f"  {g.label.split()[0]} {name}: {on_card} gated tests {verb} here")
    reasons = Counter(v.reason for v in verdicts.values() if not v.ok)
    for reason, count in reasons.most_common(5):
        lines.append(f"  not run ({count}): {reason}")
    return lines


def write_report(
    path: Path,
    inventory: Inventory,
    verdicts: dict[str, Verdict],
    measurements: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Write the JSON report atomically: a reader never sees half a file."""
    data = {
        "inventory": inventory.to_dict(),
        "verdicts": {nodeid: v.to_dict() for nodeid, v in verdicts.items()},
        "measurements": measurements or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", "utf-8")
    os.replace(tmp, path)


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
    merged: dict[str, Any] = dict(rows[0])
    for row in rows:
        merged.update(row["metrics"])

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


def measurement_rows(measurements: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per target (COLUMNS), merging the measurements of its checks."""
    by_target: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in measurements.values():
        by_target.setdefault((row["suite"], row["target"]), []).append(row)
    return [_target_row(rows) for rows in by_target.values()]


def measurement_table(measurements: dict[str, dict[str, Any]]) -> list[str]:
    """The rows as aligned text, with a header."""
    rows = [list(COLUMNS), *measurement_rows(measurements)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def markdown_summary(
    inventory: Any, verdicts: dict[str, Any], measurements: dict[str, dict[str, Any]]
) -> str:
    """A Markdown summary for CI job pages: the machine, the gate, the results, the baseline."""
    lines = ["## pytest-gpufit", ""]
    if inventory.gpus:
        env = inventory.environment
        for gpu in inventory.gpus:
            lines.append(
                f"- {gpu.describe()}; driver {env.driver_version or '-'}, CUDA "
                f"{env.cuda_driver_version or '-'}, torch {env.torch_version or '-'}"
            )
    else:
        lines.append(f"- no GPU: {inventory.reason or 'none found'}")
    if verdicts:
        ran = sum(1 for v in verdicts.values() if v.ok)
        lines.append(f"- {ran} of {len(verdicts)} gated tests had what they need")
    if measurements:
        lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in measurement_rows(measurements)]
    compared = [
        (nodeid, c)
        for nodeid, m in measurements.items()
        for c in m.get("metrics", {}).get("baseline", [])
    ]
    if compared:
        lines += [
            "",
            "### Against the accepted baseline",
            "",
            "| check | metric | baseline | now | change | tolerance | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for nodeid, c in compared:
            lines.append(
                f"| {nodeid} | {c['metric']} | {c['old']:.4g} | {c['new']:.4g} | "
                f"{c['change']:+.1%} | {c['tolerance']:.0%} | {c['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def write_markdown_summary(
    inventory: Any,
    verdicts: dict[str, Any],
    measurements: dict[str, dict[str, Any]],
    path: str | None,
    step_summary: str | None,
) -> None:
    """Write the summary to ``path`` and append it to the CI job summary file, if given."""
    text = markdown_summary(inventory, verdicts, measurements)
    if path:
        Path(path).write_text(text, "utf-8")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(text)
