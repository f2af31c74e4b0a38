"""The fit engine held against what serving engines reported: per quantity, the median and
worst |error| before and after issue 12, on the calibration rows (vLLM 0.19, H100) and on
held-out rows from public logs (``fixtures/calibration/heldout.tsv``, each with its source);
then the PCIe rows (``pcie-tp.tsv``, issue 21: tensor parallel over PCIe, each row marked
calibration or held-out) before and after the link-aware runtime, and the MXFP4 MoE-backend
rows (``moe-backend.tsv``) with the backend each log names.

"Before" is what the replaced formulas predicted (weights / N, KV bytes / N, a prefill over the
context / N, a 768 MiB runtime, NVML's total as the usable memory). It was recorded by running
this script with ``--record-before`` against the code before the change (main at bfe6ea9), into
``fixtures/calibration/before.tsv``, so that the comparison needs no old checkout. The PCIe
rows' "before" (one H100 NVLink figure for every link) was recorded the same way with
``--record-pcie-before`` against the code before issue 21 (h/engines at f6cef8f), into
``fixtures/calibration/pcie-before.tsv``.

    PYTHONPATH=. python benchmarks/fit_calibration.py
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path
from typing import Any

from pytest_gpufit.units import GIB

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "calibration"
CALIBRATION = FIXTURES / "vllm-0.19-h100-sweep.tsv"
HELDOUT = FIXTURES / "heldout.tsv"
PCIE = FIXTURES / "pcie-tp.tsv"
MOE_BACKEND = FIXTURES / "moe-backend.tsv"
BEFORE = FIXTURES / "before.tsv"
PCIE_BEFORE = FIXTURES / "pcie-before.tsv"
# Model names in the logs -> the config the estimator reads (Instruct/Chat share base shapes).
MODELS = {
    "Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a8": "llama-3.1-8b",
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w4a16": "llama-3.1-8b",
    "Qwen3-30B-A3B": "qwen3-30b-a3b",
    "Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b-v0.1",
    "gpt-oss-20b": "gpt-oss-20b",
    "DeepSeek-V2-Lite-Chat": str(FIXTURES / "configs" / "deepseek-ai__DeepSeek-V2-Lite-Chat.json"),
}
# The targets per row (relative |error|); quantities without one are reported only.
TARGETS = {
    "weights_per_gpu": 0.01,
    "kv_bytes_per_token_per_gpu": 0.005,
    "kv_tokens_at_engine_budget": 0.05,
}


def load(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for i, row in enumerate(rows):
        row["_key"] = f"{path.name}:{i + 2}"  # file:line
    return rows


def _model(row: dict[str, str]) -> str:
    config = row.get("config") or ""
    if config and config != "-":
        return str(ROOT / config) if config.endswith(".json") else config
    return MODELS[row["model"]]


def _precision(row: dict[str, str]) -> str:
    dtype = row["dtype"]
    return "stored" if dtype.startswith("stored") else dtype


def _utilization(row: dict[str, str], rows: list[dict[str, str]]) -> float:
    """The row's own figure; a KV-tokens row takes its run's (the kv_bytes row of the same
    model, TP and dtype), else the README's 0.95."""
    if row.get("gpu_memory_utilization"):
        return float(row["gpu_memory_utilization"])
    for other in rows:
        same = all(other[k] == row[k] for k in ("model", "tensor_parallel"))
        run = other["quantity"] == "kv_bytes_per_token_per_gpu" and other is not row
        plain = "kv-cache-dtype" not in other["notes"]
        if same and run and plain and other.get("gpu_memory_utilization"):
            return float(other["gpu_memory_utilization"])
    return 0.95


def _kv_dtype(row: dict[str, str]) -> str | None:
    return "fp8" if "--kv-cache-dtype fp8" in row.get("notes", "") else None


def _moe_backend(row: dict[str, str]) -> str | None:
    """The backend a row's notes name (``--moe-backend triton``), as its log line said."""
    words = row.get("notes", "").split()
    for i, word in enumerate(words[:-1]):
        if word == "--moe-backend":
            return words[i + 1].strip(";,)")
    return None


def measured(row: dict[str, str]) -> float:
    return float(row["value"])


def predict(row: dict[str, str], rows: list[dict[str, str]]) -> float | None:
    """The fit engine's figure for a row, in the row's unit; None where it has none."""
    from pytest_gpufit.engines.knobs import parse_knobs
    from pytest_gpufit.engines.planning import plan
    from pytest_gpufit.fit.estimate import usable_bytes
    from pytest_gpufit.fit.spec import load_spec
    from pytest_gpufit.hardware.catalog import catalog_gpu

    quantity = row["quantity"]
    card = row.get("card") or "h100-sxm"
    gpu = catalog_gpu("h100-sxm" if card == "-" else card)
    if quantity == "usable_device_memory":
        return usable_bytes(gpu)[0] / GIB
    engine = row.get("engine") or "vllm"
    tp = int(row["tensor_parallel"])
    spec = load_spec(_model(row))
    util = _utilization(row, rows)
    length = row.get("max_model_len")
    raw: dict[str, Any] = {"gpu_memory_utilization": util, "kv_cache_dtype": _kv_dtype(row)}
    if length and length != "-":
        raw["max_model_len"] = int(length)
    if _moe_backend(row):  # only when named: the code before issue 21 has no such knob
        raw["moe_backend"] = _moe_backend(row)
    p = plan(spec, _precision(row), gpu, tp, parse_knobs(engine, **raw))
    if quantity == "weights_per_gpu":
        return p.weights_bytes_per_gpu / GIB
    if quantity == "kv_bytes_per_token_per_gpu":
        return float(p.kv_bytes_per_token_per_gpu)
    if quantity == "kv_tokens_at_engine_budget":
        return float(p.kv_cache_tokens)
    if quantity == "activation_peak_per_gpu":
        return p.activation_bytes_per_gpu / GIB
    if quantity == "runtime_nonweight_nonkv_per_gpu":
        return (p.runtime_bytes_per_gpu + p.context_bytes_per_gpu) / GIB
    if quantity == "non_torch_in_budget_per_gpu":
        return p.runtime_bytes_per_gpu / GIB
    return None


def record_pcie_before() -> None:
    """Write pcie-before.tsv from the code on PYTHONPATH (the code before issue 21)."""
    rows = load(PCIE)
    lines = ["row\tbefore"]
    for row in rows:
        value = predict(row, rows)
        lines.append(f"{row['_key']}\t{'' if value is None else repr(value)}")
    PCIE_BEFORE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {PCIE_BEFORE}")


def predict_before(row: dict[str, str], rows: list[dict[str, str]]) -> float | None:
    """The replaced formulas (run against the old code with --record-before)."""
    from pytest_gpufit.fit.estimate import (
        ALLOCATOR_RESERVE_FRACTION,
        RUNTIME_OVERHEAD_BYTES,
        activation_bytes,
        estimate,
    )
    from pytest_gpufit.fit.spec import load_spec
    from pytest_gpufit.hardware.catalog import catalog_gpu

    quantity = row["quantity"]
    card = row.get("card") or "h100-sxm"
    gpu = catalog_gpu("h100-sxm" if card == "-" else card)
    if quantity == "usable_device_memory":
        return gpu.memory_total_bytes / GIB
    tp = int(row["tensor_parallel"])
    spec = load_spec(_model(row))
    length = row.get("max_model_len")
    context = int(length) if length and length != "-" else 8192
    est = estimate(spec, _precision(row), context, 1, _kv_dtype(row))
    act_b = 4 if est.dtype == "fp32" else 2
    acts = activation_bytes(spec, context, 1, act_b)
    if quantity == "weights_per_gpu":
        return est.weights_bytes / tp / GIB
    if quantity == "kv_bytes_per_token_per_gpu":
        return est.kv_bytes_per_token / tp
    if quantity == "kv_tokens_at_engine_budget":
        budget = gpu.memory_total_bytes * _utilization(row, rows)
        room = (budget - RUNTIME_OVERHEAD_BYTES) / (1 + ALLOCATOR_RESERVE_FRACTION)
        room -= (est.weights_bytes + acts) / tp
        return room / (est.kv_bytes_per_token / tp)
    if quantity == "activation_peak_per_gpu":
        return acts / tp / GIB
    if quantity == "runtime_nonweight_nonkv_per_gpu":
        return RUNTIME_OVERHEAD_BYTES / GIB
    return None


def record_before() -> None:
    """Write before.tsv from the code on PYTHONPATH (the old checkout)."""
    lines = ["row\tbefore"]
    for path in (CALIBRATION, HELDOUT):
        rows = load(path)
        for row in rows:
            try:
                value = predict_before(row, rows)
            except Exception as error:  # the old code may refuse a config it did not know
                print(f"{row['_key']}: {error}", file=sys.stderr)
                value = None
            lines.append(f"{row['_key']}\t{'' if value is None else repr(value)}")
    BEFORE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {BEFORE}")


def recorded_before(path: Path = BEFORE) -> dict[str, float]:
    out = {}
    if not path.exists():
        return out
    for row in load(path):
        if row["before"]:
            out[row["row"]] = float(row["before"])
    return out


def errors(path: Path) -> list[dict[str, Any]]:
    """One record per row: quantity, measured, before, after and their relative errors."""
    rows = load(path)
    before = recorded_before(PCIE_BEFORE if path == PCIE else BEFORE)
    out = []
    for row in rows:
        after = predict(row, rows)
        if after is None:
            continue
        value = measured(row)
        old = before.get(row["_key"])
        out.append(
            {
                "row": row["_key"],
                "quantity": row["quantity"],
                "model": row["model"],
                "tensor_parallel": row["tensor_parallel"],
                "engine": row.get("engine") or "vllm",
                "source": row.get("source", ""),
                "card": row.get("card", ""),
                "interconnect": row.get("interconnect", ""),
                "role": row.get("role", ""),
                "moe_backend": _moe_backend(row) or "",
                "measured": value,
                "after": after,
                "after_error": after / value - 1,
                "before": old,
                "before_error": None if old is None else old / value - 1,
            }
        )
    return out


def _summary(records: list[dict[str, Any]], key: str) -> str:
    values = [abs(r[key]) for r in records if r[key] is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.2%} / {max(values):.2%}"


def report() -> str:
    lines = []
    for title, path in (("calibration (vLLM 0.19, H100)", CALIBRATION), ("held-out", HELDOUT)):
        records = errors(path)
        lines.append(f"## {title}: median / worst |error|, before -> after")
        quantities = sorted({r["quantity"] for r in records})
        for quantity in quantities:
            group = [r for r in records if r["quantity"] == quantity]
            target = TARGETS.get(quantity)
            met = ""
            if target is not None:
                hits = sum(abs(r["after_error"]) <= target for r in group)
                met = f"  (within {target:.1%}: {hits}/{len(group)})"
            lines.append(
                f"{quantity:34s} n={len(group):2d}  {_summary(group, 'before_error'):>17s} -> "
                f"{_summary(group, 'after_error'):>15s}{met}"
            )
        if path == HELDOUT:
            lines.append("rows:")
            for r in records:
                lines.append(
                    f"  {r['quantity']} {r['model']} TP{r['tensor_parallel']} {r['engine']}: "
                    f"measured {r['measured']:.6g}, predicted {r['after']:.6g} "
                    f"({r['after_error']:+.2%}); {r['source']}"
                )
        lines.append("")
    lines += pcie_report()
    lines += moe_backend_report()
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2%}"


def pcie_report() -> list[str]:
    """The PCIe rows one by one, before and after the link-aware runtime; held-out rows set
    no constant."""
    records = errors(PCIE)
    lines = [
        "## PCIe and other-version rows (pcie-tp.tsv): before -> after issue 21; "
        "[held-out] rows set no constant"
    ]
    for role in ("calibration", "held-out"):
        group = [r for r in records if r["role"] == role]
        for quantity in sorted({r["quantity"] for r in group}):
            picked = [r for r in group if r["quantity"] == quantity]
            lines.append(
                f"{role:11s} {quantity:30s} n={len(picked)}  "
                f"{_summary(picked, 'before_error'):>17s} -> {_summary(picked, 'after_error'):>15s}"
            )
    lines.append("rows:")
    for r in records:
        mark = "[held-out] " if r["role"] == "held-out" else "[calibration] "
        before = "-" if r["before"] is None else f"{r['before']:.6g}"
        lines.append(
            f"  {mark}{r['quantity']} {r['model']} TP{r['tensor_parallel']} on {r['card']} "
            f"({r['interconnect']}): measured {r['measured']:.6g}, before {before} "
            f"({_pct(r['before_error'])}), after {r['after']:.6g} ({_pct(r['after_error'])}); "
            f"{r['source']}"
        )
    lines.append("")
    return lines


def moe_backend_report() -> list[str]:
    """Held-out MXFP4 rows: the backend the log names, and the plan with it."""
    lines = ["## MXFP4 MoE backend (moe-backend.tsv, held-out): the log's backend"]
    for r in errors(MOE_BACKEND):
        lines.append(
            f"  [held-out] {r['quantity']} {r['model']} TP{r['tensor_parallel']} "
            f"{r['moe_backend']}: measured {r['measured']:.6g}, predicted {r['after']:.6g} "
            f"({_pct(r['after_error'])}); {r['source']}"
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    if "--record-before" in sys.argv:
        record_before()
    elif "--record-pcie-before" in sys.argv:
        record_pcie_before()
    else:
        print(report())
