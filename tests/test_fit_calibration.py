"""The fit engine against what vLLM (and SGLang) reported: the issue-12 targets per row on the
calibration set, and the accuracy reached on held-out rows from public logs (sources in
fixtures/calibration/heldout.tsv). Tolerances are the issue's; misses are named, not loosened."""

from __future__ import annotations

import importlib.util
import json
import re
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
# MoE kernels (Mxfp4MoEMethod.create_weights); the Marlin padding (the default) reproduces TP 1
# (+0.4%) but not TP 2 (+1.1%) and TP 4 (-1.9%); Triton's (--moe-backend triton, vLLM's pick
# on an H100 since it ships triton_kernels) gives -1.7%, -1.0%, -3.9%: neither reproduces all
# three, and the backend the sweep used is not in its log (its scales' layout is not modelled).
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


def _rows(quantity: str, model: str, dtype: str = "bf16") -> dict[int, dict[str, Any]]:
    """The calibration records of one quantity and model, by TP size (the plain runs: no
    ``--kv-cache-dtype``)."""
    rows = BENCH.load(BENCH.CALIBRATION)
    plain = {
        r["_key"]
        for r in rows
        if r["dtype"] == dtype and "kv-cache-dtype" not in r["notes"] and r["model"] == model
    }
    return {
        int(r["tensor_parallel"]): r
        for r in CALIBRATION
        if r["quantity"] == quantity and r["model"] == model and r["row"] in plain
    }


def test_mla_cache_is_whole_on_every_rank_as_the_log_says() -> None:
    """The replaced formula divided the KV cache by the TP size; vLLM keeps DeepSeek's
    576-wide latent whole on every rank (the log's bytes per token do not shrink with TP)."""
    config = json.loads(Path(BENCH.MODELS["DeepSeek-V2-Lite-Chat"]).read_text(encoding="utf-8"))
    hand = config["num_hidden_layers"] * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * 2
    rows = _rows("kv_bytes_per_token_per_gpu", "DeepSeek-V2-Lite-Chat")
    assert sorted(rows) == [1, 2, 4]
    for tp, r in rows.items():
        assert r["after"] == hand, f"TP{tp}"
        assert r["after"] == pytest.approx(r["measured"], rel=1e-4), f"TP{tp}"
    assert rows[4]["measured"] > 3 * hand / 4  # what dividing by N would have missed


def test_activation_peak_is_not_divided_by_tp_as_the_log_says() -> None:
    """vLLM profiles the whole batch on every rank: 'torch peak memory increase: 1.89GiB' at
    TP 1, 2 and 4; the plan's figure is the same at each (the replaced one was prefill / N)."""
    rows = _rows("activation_peak_per_gpu", "Llama-3.1-8B-Instruct")
    assert sorted(rows) == [1, 2, 4]
    assert {r["measured"] for r in rows.values()} == {1.89}
    assert len({r["after"] for r in rows.values()}) == 1
    assert rows[4]["after"] == pytest.approx(1.89, rel=0.01)


def test_runtime_grows_at_tp_2_as_the_log_says() -> None:
    """At TP >= 2 the NCCL and custom all-reduce buffers add ~2.8 GiB per rank (0.76 GiB at
    TP 1, 3.6 and 3.68 at TP 2 and 4); the replaced formula was one 768 MiB constant."""
    rows = _rows("runtime_nonweight_nonkv_per_gpu", "Llama-3.1-8B-Instruct")
    assert sorted(rows) == [1, 2, 4]
    for tp, r in rows.items():
        assert r["after"] == pytest.approx(r["measured"], rel=0.02), f"TP{tp}"
    assert rows[2]["after"] - rows[1]["after"] > 2.5


def test_the_worst_rows_per_quantity() -> None:
    """Per quantity, the worst |error| against the logs: the issue's targets for KV bytes, the
    reached accuracy for runtime and activations (no target there)."""
    worst_after: dict[str, float] = {}
    for r in CALIBRATION:
        q = r["quantity"]
        worst_after[q] = max(worst_after.get(q, 0.0), abs(r["after_error"]))
    assert worst_after["kv_bytes_per_token_per_gpu"] < 0.005
    assert worst_after["runtime_nonweight_nonkv_per_gpu"] < 0.12
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


# ---- PCIe rows (issue 21.1) and the MoE backend rows (issue 21.4) ---------------------------

PCIE = BENCH.errors(BENCH.PCIE)
MOE = BENCH.errors(BENCH.MOE_BACKEND)


def test_pcie_rows_are_sourced_and_marked() -> None:
    assert PCIE and all(r["source"].startswith("https://github.com/") for r in PCIE)
    assert {r["role"] for r in PCIE} == {"calibration", "held-out"}
    assert all(r["before"] is not None for r in PCIE)  # pcie-before.tsv covers every row


def test_pcie_calibration_row_sets_the_pcie_constant() -> None:
    """The one PCIe calibration row (2 x RTX 4090, vllm#13061): 0.25 GiB non-torch per rank.
    The plan tells the link apart: on an H100 NVLink pair it gives the sweep's log figure
    ('non-torch forward increase memory: 2.07GiB' at TP 2), which the code before issue 21
    applied to every link."""
    (row,) = [r for r in PCIE if r["role"] == "calibration"]
    assert row["measured"] == 0.25
    assert row["after_error"] == pytest.approx(0, abs=0.005)
    (line,) = [
        r["log_line"]
        for r in BENCH.load(BENCH.CALIBRATION)
        if r["quantity"] == "runtime_nonweight_nonkv_per_gpu"
        and r["model"] == "Llama-3.1-8B-Instruct"
        and r["tensor_parallel"] == "2"
    ]
    match = re.search(r"non-torch forward increase memory: ([\d.]+)GiB", line)
    assert match, line
    knobs = parse_knobs("vllm", gpu_memory_utilization=0.95, max_model_len=8192)
    nvlink = plan(load_spec("llama-3.1-8b"), "bf16", catalog_gpu("h100-sxm"), 2, knobs)
    assert nvlink.runtime_bytes_per_gpu / 2**30 == pytest.approx(float(match[1]), rel=0.005)
    assert row["after"] < float(match[1]) / 5


def test_pcie_heldout_rows_are_reported_not_met() -> None:
    """Held out (no constant set from them): the 4090 pair's KV tokens -6.7%
    (its V0 profile has no sampler pass, the V1 model's activations over-count); the L40S TP 1
    row +18.5% and vLLM 0.6.5's non-torch figures -86% / -42% (other engine versions, not
    modelled). Pinned so a change shows; they claim no target."""
    errors = {(r["quantity"], r["card"], r["tensor_parallel"]): r for r in PCIE}
    kv = errors[("kv_tokens_at_engine_budget", "rtx-4090", "2")]
    assert kv["after_error"] == pytest.approx(-0.0669, abs=0.005)
    assert errors[("kv_tokens_at_engine_budget", "l40s", "1")]["after_error"] == pytest.approx(
        0.1847, abs=0.005
    )
    assert errors[("non_torch_in_budget_per_gpu", "h100-sxm", "2")]["after_error"] < -0.4


def test_moe_backend_rows_within_half_a_percent() -> None:
    """gpt-oss-120b on one H100: Marlin's log (vllm#23278) and Triton's (vllm#33155), each
    planned with the backend it names."""
    by_backend = {r["moe_backend"]: r["after_error"] for r in MOE}
    assert set(by_backend) == {"marlin", "triton"}
    assert all(abs(e) < 0.005 for e in by_backend.values())
