"""The fit engine against what vLLM (and SGLang) reported: the issue-12 targets per row on the
calibration set, and the accuracy reached on held-out rows from public logs (sources in
fixtures/calibration/heldout.tsv). Tolerances are the issue's; misses are named, not loosened."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pytest_gpufit.engines.knobs import parse_knobs
from pytest_gpufit.engines.planning import plan
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.hardware.catalog import catalog_gpu

ROOT = Path(__file__).parent.parent


def _benchmark() -> ModuleType:
    path = ROOT / "benchmarks" / "fit_calibration.py"
    spec = importlib.util.spec_from_file_location("fit_calibration", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["fit_calibration"] = module
    spec.loader.exec_module(module)
    return module


BENCH = _benchmark()
CALIBRATION = BENCH.errors(BENCH.CALIBRATION)
HELDOUT = BENCH.errors(BENCH.HELDOUT)
# Known misses on the calibration set, kept visible: vLLM pads gpt-oss's MXFP4 experts for its
# MoE kernels (Mxfp4MoEMethod.create_weights); the Marlin padding modelled here reproduces TP 1
# (-0.4%) but not TP 2 (+1.1%) and TP 4 (-1.9%): the backend the sweep used is not in its log.
KNOWN_MISSES = {
    ("weights_per_gpu", "gpt-oss-20b", "2"),
    ("weights_per_gpu", "gpt-oss-20b", "4"),
}


def _cases(records: list[dict[str, Any]]) -> list[Any]:
    cases = []
    for r in records:
        if r["quantity"] not in BENCH.TARGETS:
            continue
        marks = []
        if (r["quantity"], r["model"], r["tensor_parallel"]) in KNOWN_MISSES:
            marks.append(pytest.mark.xfail(strict=True, reason="known miss: mxfp4 padding"))
        cases.append(pytest.param(r, id=f"{r['row']}-{r['quantity']}", marks=marks))
    return cases


@pytest.mark.parametrize("record", _cases(CALIBRATION))
def test_calibration_row_within_the_issue_target(record: dict[str, Any]) -> None:
    target = BENCH.TARGETS[record["quantity"]]
    assert abs(record["after_error"]) <= target, (
        f"{record['quantity']} {record['model']} TP{record['tensor_parallel']}: measured "
        f"{record['measured']}, predicted {record['after']} ({record['after_error']:+.2%})"
    )


def test_every_calibration_quantity_is_checked() -> None:
    quantities = {r["quantity"] for r in CALIBRATION}
    assert set(BENCH.TARGETS) <= quantities
    assert len([r for r in CALIBRATION if r["quantity"] in BENCH.TARGETS]) == 38


def test_the_replaced_formulas_were_worse() -> None:
    """MLA under TP, runtime at TP >= 2 and activations were the issue's large errors."""
    worst_before = {}
    worst_after = {}
    for r in CALIBRATION:
        q = r["quantity"]
        worst_before[q] = max(worst_before.get(q, 0.0), abs(r["before_error"]))
        worst_after[q] = max(worst_after.get(q, 0.0), abs(r["after_error"]))
    assert (
        worst_before["kv_bytes_per_token_per_gpu"]
        > 0.7
        > 0.005
        > worst_after["kv_bytes_per_token_per_gpu"]
    )
    assert worst_before["runtime_nonweight_nonkv_per_gpu"] > 0.8
    assert worst_after["runtime_nonweight_nonkv_per_gpu"] < 0.12
    assert worst_before["activation_peak_per_gpu"] > 0.8
    assert worst_after["activation_peak_per_gpu"] < 0.15


RUNS = sorted(
    {
        (r["model"], int(r["tensor_parallel"]))
        for r in CALIBRATION
        if r["quantity"] == "kv_tokens_at_engine_budget"
    }
)


@pytest.mark.parametrize(("model", "tp"), RUNS)
def test_every_calibration_run_starts(model: str, tp: int) -> None:
    """Every run in the sweep started and reported a KV cache: the plan must say it starts."""
    precision = "stored" if model == "gpt-oss-20b" else "bf16"
    knobs = parse_knobs("vllm", gpu_memory_utilization=0.95, max_model_len=8192)
    p = plan(load_spec(BENCH.MODELS[model]), precision, catalog_gpu("h100-sxm"), tp, knobs)
    assert p.starts, p.reason


def test_llama_70b_bf16_on_one_h200_does_not_start_in_vllm() -> None:
    """141 GB of weights, a 0.9 budget of the card: vLLM fails, although the bytes "fit"."""
    knobs = parse_knobs("vllm", gpu_memory_utilization=0.9)
    p = plan(load_spec("llama-3.1-70b"), "bf16", catalog_gpu("h200"), 1, knobs)
    assert not p.starts
    assert p.reason and "budget" in p.reason
    assert plan(load_spec("llama-3.1-70b"), "bf16", catalog_gpu("h200"), 2, knobs).starts


# ---- held-out rows: what is honestly reached (see the report, BENCHMARKS.md) ----------------


def _held(quantity: str) -> list[dict[str, Any]]:
    return [r for r in HELDOUT if r["quantity"] == quantity]


def test_heldout_rows_have_a_source() -> None:
    assert HELDOUT
    assert all(r["source"].startswith("https://github.com/") for r in HELDOUT)


def test_heldout_weights_per_gpu() -> None:
    """Target 1%: met by 1 of 3 (70B w8a8 +0.01%); 405B FP8 -1.7%, R1-Distill-Qwen-14B -1.2%
    (both on older vLLM versions)."""
    errors = [abs(r["after_error"]) for r in _held("weights_per_gpu")]
    assert len(errors) == 3
    assert max(errors) < 0.02
    assert sum(e <= 0.01 for e in errors) >= 1


def test_heldout_kv_bytes_per_token() -> None:
    """SGLang +0.05% (target met); vLLM 0.9 with an LMCache connector -1.1% (missed)."""
    by_engine = {r["engine"]: abs(r["after_error"]) for r in _held("kv_bytes_per_token_per_gpu")}
    assert by_engine["sglang"] <= 0.005
    assert by_engine["vllm"] < 0.012


def test_heldout_kv_tokens_are_reported_not_met() -> None:
    """Qwen3-235B-FP8 TP4: vLLM ~0.9 +41%, SGLang -10%: both outside the 5% target (other
    engine versions and defaults than the calibration); this test pins the figures so a change
    shows, it does not claim the target."""
    errors = {r["engine"]: r["after_error"] for r in _held("kv_tokens_at_engine_budget")}
    assert errors["vllm"] == pytest.approx(0.4055, abs=0.01)
    assert errors["sglang"] == pytest.approx(-0.0992, abs=0.01)
