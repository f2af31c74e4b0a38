"""The all-reduce measurement (issue 21, item 5): nccl-tests' maths as pure units, and a real
``torch.distributed`` sweep on gloo across 2 processes with a baseline and failing floors."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from pytest_gpufit.allreduce import (
    BASELINE_METRICS,
    AllReduceParams,
    AllReduceResult,
    SizeResult,
    algorithm_bandwidth,
    bus_bandwidth,
    floor_failures,
    measure,
    parse_params,
    run_allreduce,
    sweep_sizes,
)
from pytest_gpufit.baseline.compare import METRICS, compare, higher_is_better
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import simulated_gpus

SMALL = {"min_size": "4KiB", "max_size": "64KiB", "factor": 4, "warmup": 1, "iters": 3}


# ---- the maths ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ranks", "factor"), [(2, 1.0), (4, 1.5), (8, 1.75)])
def test_bus_bandwidth_is_algbw_times_2_n_minus_1_over_n(ranks: int, factor: float) -> None:
    assert bus_bandwidth(10.0, ranks) == pytest.approx(10.0 * factor)


def test_algorithm_bandwidth_matches_a_published_all_reduce_perf_line() -> None:
    # tinygrad/open-gpu-kernel-modules README: 6x RTX 4090, 33554432 B in 2275.1 us,
    # algbw 14.75, busbw 24.58 GB/s.
    algbw = algorithm_bandwidth(33554432, 2275.1e-6)
    assert round(algbw, 2) == 14.75
    assert round(bus_bandwidth(algbw, 6), 2) == 24.58


def test_sweep_sizes_step_by_factor_in_whole_elements() -> None:
    assert sweep_sizes(8, 2**20, 4, 2) == [8, 32, 128, 512, 2048, 8192, 32768, 131072, 524288]
    assert sweep_sizes(3, 3, 2, 4) == [4]  # below one element: one element
    assert sweep_sizes(6, 48, 2, 4) == [4, 12, 24, 48]


def _result(small_s: float, large_s: float, wrong: int = 0) -> AllReduceResult:
    sizes = (SizeResult(8, (small_s,)), SizeResult(2**26, (large_s, large_s * 1.1), wrong))
    return AllReduceResult("nccl", 2, "bf16", sizes)


def test_metrics_are_busbw_at_the_largest_and_latency_at_the_smallest_size() -> None:
    metrics = _result(20e-6, 0.002).metrics()
    assert metrics["allreduce_busbw_gb_s"] == pytest.approx(2**26 / 0.0021 / 1e9)  # median
    assert metrics["allreduce_latency_us"] == pytest.approx(20.0)
    assert metrics["allreduce_busbw_gb_s_spread"] == pytest.approx(0.1 / 1.05)
    assert metrics["allreduce_latency_us_spread"] == 0.0
    assert [row["size_bytes"] for row in metrics["allreduce_sweep"]] == [8, 2**26]


def test_floors_pass_and_fail() -> None:
    fast = _result(20e-6, 0.002)
    floors = AllReduceParams(min_busbw_gb_s=20, max_latency_us=30)
    assert floor_failures(fast, floors) == []
    assert floor_failures(fast, AllReduceParams()) == []
    slow = _result(40e-6, 0.02)  # P2P off: a tenth of the bandwidth, twice the latency
    failures = floor_failures(slow, floors)
    assert failures == [
        "all-reduce bus bandwidth 3.2 GB/s at 64 MiB is below the floor of 20 GB/s "
        "(nccl, 2 ranks, bf16)",
        "all-reduce latency 40 us at 8 B is above the ceiling of 30 us (nccl, 2 ranks, bf16)",
    ]


def test_wrong_sums_fail_whatever_the_speed() -> None:
    failures = floor_failures(_result(1e-6, 1e-4, wrong=3), AllReduceParams())
    assert failures == [
        "all-reduce returned wrong sums at 64 MiB (nccl, 2 ranks, bf16): the link corrupts data"
    ]


def test_the_metrics_are_baseline_metrics_with_their_direction() -> None:
    assert set(BASELINE_METRICS) <= set(METRICS)
    assert higher_is_better("allreduce_busbw_gb_s") is True
    assert higher_is_better("allreduce_latency_us") is False
    old = _result(20e-6, 0.002).metrics()
    new = _result(40e-6, 0.004).metrics()  # half the bandwidth, twice the latency
    verdicts = {c.metric: c.verdict for c in compare(old, new, {}, 0.05)}
    assert verdicts == {"allreduce_busbw_gb_s": "worse", "allreduce_latency_us": "worse"}


# ---- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"size": "8B"}, "allreduce.size: unknown key; known: min_size, max_size"),
        ({"min_size": 8}, "allreduce.min_size: expected a size with its unit such as '8B'"),
        ({"max_size": "32GiB"}, "allreduce.max_size: expected 1 B to 16 GiB, got '32GiB'"),
        ({"min_size": "1MiB", "max_size": "1KiB"}, "allreduce.min_size: 1 MiB is above max_size"),
        ({"dtype": "fp8"}, "allreduce.dtype: expected one of fp32, fp16, bf16, got 'fp8'"),
        ({"iters": 0}, "allreduce.iters: expected a whole number from 1 to 10000, got 0"),
        ({"processes": 1}, "allreduce.processes: expected a whole number from 2 to 64"),
        ({"min_busbw_gb_s": -1}, "allreduce.min_busbw_gb_s: expected a number above 0"),
        ({"max_latency_us": True}, "allreduce.max_latency_us: expected a number above 0"),
        ({"backend": "mpi"}, "allreduce.backend: expected nccl or gloo, got 'mpi'"),
    ],
)
def test_bad_parameters_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(GpufitError) as error:
        parse_params(raw)
    assert str(error.value).startswith(message), str(error.value)


def test_defaults_follow_all_reduce_perf_habits() -> None:
    params = parse_params(None)
    assert (params.min_size, params.max_size, params.factor) == (8, 64 * 2**20, 2)
    assert (params.warmup, params.iters, params.dtype) == (5, 20, "fp32")
    assert len(sweep_sizes(params.min_size, params.max_size, params.factor, 4)) == 24


def test_simulated_or_single_devices_are_refused_before_anything_starts() -> None:
    with pytest.raises(GpufitError, match="simulated cards cannot be measured"):
        run_allreduce({}, simulated_gpus("2*h100-sxm"))
    import dataclasses

    (one,) = (dataclasses.replace(g, simulated=False) for g in simulated_gpus("h100-sxm"))
    with pytest.raises(GpufitError, match="needs 2 or more GPUs, got 1"):
        run_allreduce({}, [one])


# ---- a real sweep: gloo, 2 processes ---------------------------------------------------------


@pytest.fixture(scope="module")
def gloo_run() -> tuple[dict[str, Any], list[str]]:
    pytest.importorskip("torch.distributed")
    # Floors no machine meets (1 PB/s, 1 ps): the check must fail on them, with figures.
    return run_allreduce({**SMALL, "repeats": 3, "min_busbw_gb_s": 1e6, "max_latency_us": 1e-6}, [])


def test_gloo_sweep_across_two_processes(gloo_run: tuple[dict[str, Any], list[str]]) -> None:
    metrics, _ = gloo_run
    assert metrics["allreduce_backend"] == "gloo" and metrics["allreduce_ranks"] == 2
    assert [row["size_bytes"] for row in metrics["allreduce_sweep"]] == [4096, 16384, 65536]
    assert all(row["wrong"] == 0 for row in metrics["allreduce_sweep"])
    assert metrics["allreduce_busbw_gb_s"] > 0 and metrics["allreduce_latency_us"] > 0
    # Two ranks: the bus bandwidth equals the algorithm bandwidth.
    for row in metrics["allreduce_sweep"]:
        assert row["busbw_gb_s"] == pytest.approx(row["algbw_gb_s"])
        assert row["algbw_gb_s"] == pytest.approx(row["size_bytes"] / row["time_us"] / 1e3)


def test_gloo_sweep_fails_its_floors(gloo_run: tuple[dict[str, Any], list[str]]) -> None:
    _, failures = gloo_run
    assert len(failures) == 2
    assert failures[0].startswith("all-reduce bus bandwidth ")
    assert failures[0].endswith(
        " GB/s at 64 KiB is below the floor of 1,000,000 GB/s (gloo, 2 ranks, fp32)"
    )
    assert failures[1].startswith("all-reduce latency ")
    assert " us at 4 KiB is above the ceiling of 0.000001 us (gloo, 2 ranks, fp32)" in failures[1]


def test_a_gloo_run_is_a_baseline_for_the_next(gloo_run: tuple[dict[str, Any], list[str]]) -> None:
    metrics, _ = gloo_run
    halved = {**metrics, "allreduce_busbw_gb_s": metrics["allreduce_busbw_gb_s"] / 2}
    comparisons = {c.metric: c for c in compare(metrics, halved, {}, 0.1)}
    assert set(comparisons) == set(BASELINE_METRICS)
    assert comparisons["allreduce_busbw_gb_s"].verdict == "worse"
    assert comparisons["allreduce_latency_us"].verdict == "ok"


def test_a_failing_rank_is_an_error_with_its_output() -> None:
    pytest.importorskip("torch.distributed")
    with pytest.raises(GpufitError) as error:
        measure(parse_params({**SMALL, "backend": "nccl"}), [])  # no NCCL in a CPU torch
    text = str(error.value)
    assert text.startswith("allreduce: rank ") and " exited with " in text, text
    assert "its output ended: " in text


def test_a_rank_past_the_timeout_is_stopped(tmp_path: Any) -> None:
    with pytest.raises(GpufitError, match=r"did not finish within 0\.2 s \(a hung collective"):
        measure(parse_params({**SMALL, "timeout_s": 0.2}), [])
    # Every rank was killed: no process of ours runs the rank module any more.
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True)
    mine = [
        line
        for line in out.stdout.splitlines()
        if "pytest_gpufit.allreduce" in line and line.split()[1] == str(os.getpid())
    ]
    assert mine == []


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, pytest_gpufit.allreduce; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
