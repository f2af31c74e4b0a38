"""The ``serves`` check holds a launched engine's log against the engine plan (issue 12 item 4)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pytest_gpufit.fit.estimate import estimate
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.hardware.catalog import catalog_gpu
from pytest_gpufit.serving.facts import parse_engine_log
from pytest_gpufit.suites.serving_checks import run_serves

# Figures of the vLLM 0.19.0 H100 sweep (fixtures/calibration, Llama-3.1-8B-Instruct bf16,
# TP 1, --max-model-len 8192 --gpu-memory-utilization 0.95), in vLLM's own line format; the
# first line is what vLLM prints of the command that `launch:` ran.
ARGS = "'model': 'meta-llama/Llama-3.1-8B-Instruct', 'max_model_len': 8192"
LOG = "\n".join(
    [
        f"(APIServer pid=1) INFO [utils.py:233] non-default args: {{{ARGS}, "
        "'gpu_memory_utilization': 0.95}",
        "(EngineCore pid=2) INFO [gpu_model_runner.py:4959] Model loading took 14.99 GiB memory",
        "(EngineCore pid=2) INFO [gpu_worker.py:436] Available KV cache memory: 58.11 GiB",
        "(EngineCore pid=2) INFO [kv_cache_utils.py:1319] GPU KV cache size: 476,016 tokens",
        "(EngineCore pid=2) INFO [kv_cache_utils.py:1323] "
        "Maximum concurrency for 8,192 tokens per request: 58.11x",
    ]
)


def served_with(log: Path) -> Any:
    return SimpleNamespace(
        model="m",
        base_url="http://127.0.0.1:1/v1",
        startup_s=None,
        server=None,
        log_path=log,
        max_model_len=lambda: None,
        allocation=lambda: parse_engine_log(log.read_text()),
    )


def context(gpu: Any) -> Any:
    spec = load_spec("llama-3.1-8b")
    ctx = SimpleNamespace(
        target=SimpleNamespace(model="llama-3.1-8b", dtype="bf16", context=None),
        gpu=gpu,
        spec=spec,
        metrics={},
        failures=[],
        estimate=lambda: estimate(spec, "bf16"),
    )
    ctx.expect = lambda ok, message: None if ok else ctx.failures.append(message)
    return ctx


def test_serves_records_the_plan_beside_the_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(LOG)
    ctx = context(catalog_gpu("h100"))
    run_serves(ctx, served_with(log), {})
    m = ctx.metrics
    assert m["engine_weights_gib"] == 14.99 and m["engine_kv_cache_tokens"] == 476016
    assert "engine_weights_vs_estimate" in m  # the plain estimate stays
    assert m["plan_engine"] == "vllm" and m["plan_starts"] is True
    assert abs(m["engine_weights_gib_vs_plan"]) < 0.01  # weights per GPU within 1%
    for key in ("kv_cache_tokens", "kv_cache_gib", "max_concurrency", "kv_bytes_per_token"):
        assert f"plan_{key}" in m and f"engine_{key}_vs_plan" in m
    assert not ctx.failures  # recorded, not judged


def test_a_bad_setup_in_the_log_is_recorded_not_raised(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(LOG.replace("0.95}", "1.5}"))
    ctx = context(catalog_gpu("h100"))
    run_serves(ctx, served_with(log), {})
    assert "--gpu-memory-utilization must be a fraction" in ctx.metrics["plan_error"]
    ctx = context(None)  # on the CPU: no card to plan for
    run_serves(ctx, served_with(log), {})
    assert not any(key.startswith("plan_") for key in ctx.metrics)


def test_a_figure_the_log_gives_as_zero_is_recorded_finite(tmp_path: Path) -> None:
    """A tiny model's log says 'Model loading took 0.00 GiB': no ratio to the plan exists. The
    comparison is recorded, not judged, so it must not put an inf into the metrics (a
    non-finite measurement fails the check) nor raise."""
    from pytest_gpufit.suites.checks import non_finite

    log = tmp_path / "server.log"
    log.write_text(LOG.replace("took 14.99 GiB", "took 0.00 GiB"))
    ctx = context(catalog_gpu("h100"))
    run_serves(ctx, served_with(log), {})
    assert non_finite(ctx.metrics) == []
    assert "plan_weights_gib" in ctx.metrics and "engine_weights_gib_vs_plan" not in ctx.metrics
    assert "engine_kv_cache_tokens_vs_plan" in ctx.metrics  # the other figures still compared


def test_a_log_with_a_number_too_long_does_not_raise(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(LOG + f"\nINFO Using max model len {'9' * 5000}\n")
    ctx = context(catalog_gpu("h100"))
    run_serves(ctx, served_with(log), {})
    assert ctx.metrics["plan_starts"] is True and not ctx.failures


def test_the_plan_uses_the_ranks_that_logged_when_the_log_states_no_tp(tmp_path: Path) -> None:
    """vLLM 0.8 logs one 'Model loading took' per rank and no TP size (fixtures/engine-logs/
    vllm-0.8-v1-qwen3-tp4.log): the serves check must plan for those 4 ranks, as
    ``gpufit calibrate`` does, not for one GPU (a +300% 'error' on the weights)."""
    lines = [
        f"(VllmWorker rank={r} pid={105 + r}) INFO [gpu_model_runner.py:1347] Model loading "
        "took 3.7500 GiB and 12.0 seconds"
        for r in range(4)
    ]
    log = tmp_path / "server.log"
    log.write_text("\n".join(lines) + "\n")
    ctx = context(catalog_gpu("h100"))
    run_serves(ctx, served_with(log), {})
    assert ctx.metrics["plan_tensor_parallel"] == 4
    assert abs(ctx.metrics["engine_weights_gib_vs_plan"]) < 0.02
