"""The second card (issue 21.2): every way to use it as a memory plan (engines/parallel.py), the
all-reduce time by topology (fit/link_time.py), the decode per strategy (fit/decode_time.py),
and the model held against the published rows it was calibrated on or checked against
(benchmarks/second_card.py, fixtures/calibration/second-card-*.tsv)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_gpufit.engines.knobs import parse_knobs
from pytest_gpufit.engines.parallel import (
    offered,
    pipeline_layers,
    plan_strategy,
    stage_specs,
)
from pytest_gpufit.engines.planning import plan
from pytest_gpufit.engines.protocol import EngineKnobs
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.decode_time import (
    busiest_experts,
    decode_estimate,
    distinct_experts,
    model_reads,
)
from pytest_gpufit.fit.link_time import LinkPath, allreduce_seconds, parse_topology
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.hardware.catalog import catalog_gpu

ROOT = Path(__file__).parent.parent
PRO = catalog_gpu("rtx-pro-6000")
BW = float(PRO.memory_bandwidth_bytes_s or 0)
ON = LinkPath("host-bridge", True)


def _benchmark() -> ModuleType:
    path = ROOT / "benchmarks" / "second_card.py"
    spec = importlib.util.spec_from_file_location("second_card", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["second_card"] = module
    spec.loader.exec_module(module)
    return module


BENCH = _benchmark()


def knobs(context: int = 8192) -> EngineKnobs:
    return parse_knobs("vllm", max_model_len=context)


# ---- memory plans per strategy ----------------------------------------------------------


def test_pipeline_split_is_vllms_and_the_stages_add_up_to_the_model() -> None:
    assert pipeline_layers(64, 2) == [32, 32]
    assert sum(pipeline_layers(61, 4)) == 61
    spec = load_spec("qwen3-30b-a3b")
    stages = stage_specs(spec, 2)
    for role in ("attention", "experts", "experts_active", "router", "norms"):
        assert sum(getattr(s.params, role) for s in stages) == getattr(spec.params, role), role
    assert stages[0].params.embedding == spec.params.embedding and stages[0].params.lm_head == 0
    assert stages[1].params.lm_head == spec.params.lm_head and stages[1].params.embedding == 0
    assert stages[0].vocab_size == 0  # no sampler before the last stage
    assert sum(s.kv.full_layers for s in stages) == spec.kv.full_layers
    with pytest.raises(GpufitError, match="at most one stage per layer"):
        pipeline_layers(2, 3)


def test_each_strategy_plans_as_vllm_would() -> None:
    spec = load_spec("qwen3-32b")
    one = plan(spec, "bf16", PRO, 1, knobs())
    tp = plan_strategy("tp", spec, "bf16", PRO, 2, knobs())
    pp = plan_strategy("pp", spec, "bf16", PRO, 2, knobs())
    dp = plan_strategy("dp", spec, "bf16", PRO, 2, knobs())
    assert tp.plans == (plan(spec, "bf16", PRO, 2, knobs()),)
    assert tp.launch == "--tensor-parallel-size 2" and pp.launch == "--pipeline-parallel-size 2"
    # replicas: each card runs the one-card plan; the KV cache is per copy, requests add up
    assert dp.kv_cache_tokens == one.kv_cache_tokens and dp.replicas == 2
    assert dp.max_concurrency == pytest.approx(2 * one.max_concurrency, abs=0.01)
    # pipeline: half the layers per card; one KV cache sized by the fuller stage
    assert len(pp.plans) == 2
    assert all(p.weights_bytes_per_gpu < 0.55 * one.weights_bytes_per_gpu for p in pp.plans)
    assert pp.kv_cache_tokens == min(p.kv_cache_tokens for p in pp.plans)
    assert pp.plans[0].activation_bytes_per_gpu < pp.plans[1].activation_bytes_per_gpu
    assert pp.kv_cache_tokens > 4 * one.kv_cache_tokens


def test_expert_parallel_only_for_moe_and_only_where_the_engine_offers_it() -> None:
    assert "ep" in offered("vllm", load_spec("qwen3-30b-a3b"), 2)
    assert "ep" not in offered("vllm", load_spec("qwen3-32b"), 2)
    assert offered("llama.cpp", load_spec("qwen3-30b-a3b"), 2) == ("pp", "dp")
    with pytest.raises(GpufitError, match="llama.cpp offers no tensor parallel"):
        plan_strategy(
            "tp", load_spec("qwen3-32b"), "bf16", PRO, 2, parse_knobs("llama.cpp", ctx_size=8192)
        )


# ---- all-reduce time ------------------------------------------------------------------------


def test_allreduce_by_implementation_topology_and_p2p() -> None:
    size = 5120 * 2  # Qwen3-32B, one token, bf16
    oneshot = allreduce_seconds("one-shot", 2, size, ON)
    nccl = allreduce_seconds("nccl", 2, size, ON)
    assert oneshot < nccl < allreduce_seconds("nccl", 2, size, LinkPath("host-bridge", False))
    switch = allreduce_seconds("nccl", 8, size, LinkPath("switch", True))
    assert switch < allreduce_seconds("nccl", 8, size, LinkPath("sockets", True))
    assert allreduce_seconds("nccl", 4, size, ON) > nccl  # more ranks, more steps
    assert allreduce_seconds("nccl", 2, 16 * size, ON) > nccl  # more bytes


@pytest.mark.parametrize(
    ("text", "cls"),
    [("PIX", "switch"), ("pxb", "switch"), ("NODE", "host-bridge"), ("system", "sockets")],
)
def test_topology_names(text: str, cls: str) -> None:
    assert parse_topology(text) == cls


def test_a_bad_topology_names_the_option() -> None:
    with pytest.raises(GpufitError, match="--topology: expected one of .*PIX.*got 'bus'"):
        parse_topology("bus")


# ---- decode per strategy ----------------------------------------------------------------------


@given(
    st.integers(min_value=8, max_value=512),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=512),
)
def test_touched_experts_grow_with_tokens_and_never_pass_the_total(
    experts: int, top_k: int, tokens: int
) -> None:
    here = distinct_experts(experts, top_k, tokens)
    assert top_k <= here <= experts + 1e-9
    assert distinct_experts(experts, top_k, tokens + 1) >= here


def test_the_busiest_card_under_expert_parallel() -> None:
    assert busiest_experts(8, 128, 2) > 4  # 8 experts over 2 cards: the busier one holds > 4
    assert busiest_experts(128, 128, 2) == 64  # all touched: each card holds its 64
    assert busiest_experts(8, 128, 1) == 8


def test_what_each_way_does_to_decode() -> None:
    reads = model_reads(load_spec("qwen3-32b"), "bf16", 8192)
    one = decode_estimate("tp", reads, 1, BW, ON, "one-shot", 8)
    tp = decode_estimate("tp", reads, 2, BW, ON, "one-shot", 8)
    pp = decode_estimate("pp", reads, 2, BW, ON, "nccl", 8)
    dp = decode_estimate("dp", reads, 2, BW, ON, "nccl", 8)
    assert one.batch1_tok_s < tp.batch1_tok_s < 2 * one.batch1_tok_s  # the link costs
    assert pp.batch1_tok_s <= one.batch1_tok_s  # the bubble: one stage works at a time
    assert dp.batch1_tok_s == one.batch1_tok_s  # one request runs on one card
    assert dp.aggregate_tok_s > one.aggregate_tok_s and pp.aggregate_tok_s > one.aggregate_tok_s
    assert tp.link_share > 0 and dp.link_share == 0 and dp.allreduce == "none"
    for d in (one, tp, pp, dp):
        assert d.batch1_tok_s < d.bound_tok_s  # a model under its bound
    slow = decode_estimate("tp", reads, 2, BW, LinkPath("sockets", False), "nccl", 8)
    assert slow.batch1_tok_s < tp.batch1_tok_s and slow.link_share > tp.link_share


def test_expert_parallel_waits_for_the_busiest_card_at_batch_1() -> None:
    reads = model_reads(load_spec("qwen3-30b-a3b"), "bf16", 8192)
    tp = decode_estimate("tp", reads, 2, BW, ON, "one-shot", 1)
    ep = decode_estimate("ep", reads, 2, BW, ON, "one-shot", 1)
    assert ep.batch1_tok_s < tp.batch1_tok_s


# ---- against the published rows ----------------------------------------------------------------


def _tsv(name: str) -> list[dict[str, str]]:
    with (ROOT / "fixtures" / "calibration" / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_every_published_decode_row_is_predicted_or_says_why_not() -> None:
    published = {f"pcie-decode.tsv:{i}" for i in range(2, len(_tsv("pcie-decode.tsv")) + 2)}
    accounted = {r["row"]: r for r in _tsv("second-card-decode.tsv")}
    assert set(accounted) == published
    for key, row in accounted.items():
        assert row["role"] in {"calibration", "held-out", "not-predicted"}, key
        if row["role"] == "not-predicted":
            assert len(row["note"]) > 20, key


@pytest.mark.parametrize("rows", [BENCH.link_rows, BENCH.decode_rows], ids=["link", "decode"])
def test_calibration_rows_are_reproduced_and_held_out_ones_within_20_or_explained(
    rows: object,
) -> None:
    items = [r for r in rows() if "predicted" in r]  # type: ignore[operator]
    for r in items:
        if r["role"] == "calibration":
            assert abs(BENCH.error(r)) < 0.005, r["row"]
        elif abs(BENCH.error(r)) > BENCH.TOLERANCE:
            assert BENCH.explained_miss(r), f"{r['row']}: a miss must say why"


def test_at_least_three_published_pcie_decode_rows_are_within_20_percent() -> None:
    held = [r for r in BENCH.decode_rows() if r["role"] == "held-out" and "predicted" in r]
    within = [r for r in held if abs(BENCH.error(r)) <= BENCH.TOLERANCE]
    assert len(within) >= 3, [r["row"] for r in held]
    assert any(r["measure"] == "aggregate_output_tok_s" for r in within)
