"""Engine facts: vLLM log lines (real ones: public logs, the calibration sweep) and metrics."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_gpufit.serving.facts import (
    EngineAllocation,
    engine_from,
    kv_tokens_from_metrics,
    parse_cache_config_info,
    parse_engine_log,
)

CALIBRATION = Path(__file__).parents[1] / "fixtures" / "calibration" / "vllm-0.19-h100-sweep.tsv"

# Verbatim lines from public vLLM logs (V1 engine, 2025-2026 releases).
V1_LOG = "\n".join(
    [
        "(EngineCore pid=2207) INFO 05-21 15:45:46 [default_loader.py:397] "
        "Loading weights took 2.33 seconds",
        "(EngineCore pid=2207) INFO 05-21 15:45:47 [gpu_model_runner.py:4959] "
        "Model loading took 7.75 GiB memory and 3.151355 seconds",
        "(EngineCore pid=187) INFO 05-01 19:03:12 [gpu_worker.py:440] "
        "Available KV cache memory: 0.32 GiB",
        "(EngineCore pid=187) INFO 05-01 19:03:12 [kv_cache_utils.py:1711] "
        "GPU KV cache size: 6,288 tokens",
        "(EngineCore pid=187) INFO 05-01 19:03:12 [kv_cache_utils.py:1716] "
        "Maximum concurrency for 8,192 tokens per request: 1.50x",
    ]
)

# Early V1 (January 2025) and V0-era wording: "GB" figures that vLLM computed in GiB.
OLD_LOG = "\n".join(
    [
        "INFO 01-30 03:18:12 gpu_model_runner.py:848] Loading model weights took 67.7229 GB",
        "INFO 01-30 03:19:14 kv_cache_utils.py:395] # GPU blocks: 1381",
        "INFO 01-30 03:19:14 kv_cache_utils.py:398] "
        "Maximum concurrency for 2048 tokens per request: 10.79x",
    ]
)


def test_v1_log_lines() -> None:
    a = parse_engine_log(V1_LOG)
    assert a.weights_gib == 7.75 and a.kv_cache_gib == 0.32
    assert (a.kv_cache_tokens, a.kv_device) == (6288, "GPU")
    assert (a.max_concurrency, a.concurrency_tokens) == (1.5, 8192)
    assert len(a.lines) == 4  # "Loading weights took 2.33 seconds" is not a memory figure


def test_old_wording() -> None:
    a = parse_engine_log(OLD_LOG)
    assert a.weights_gib == 67.7229 and a.kv_cache_tokens is None
    assert (a.max_concurrency, a.concurrency_tokens) == (10.79, 2048)
    legacy = "INFO 04-05 05:52:54 [gpu_model_runner.py:1186] Model loading took 15.1749 GB and 5 s"
    assert parse_engine_log(legacy).weights_gib == 15.1749


def test_cpu_build_on_one_line_and_tensor_parallel_ranks() -> None:
    text = (
        "(VllmWorker rank=0 pid=1) INFO [gpu_model_runner.py:1] Model loading took 7.51 GiB"
        "\n(VllmWorker rank=1 pid=2) INFO [gpu_model_runner.py:1] Model loading took 7.52 GiB"
        "\nINFO [kv_cache_utils.py:1] CPU KV cache size: 11,264 tokens, "
        "Maximum concurrency for 512 tokens per request: 22.00x"
    )
    a = parse_engine_log(text)
    assert a.weights_gib == 7.52  # per GPU: the largest rank
    assert (a.kv_cache_tokens, a.kv_device, a.max_concurrency, a.concurrency_tokens) == (
        11264,
        "CPU",
        22.0,
        512,
    )


def test_restart_in_the_same_log_keeps_the_last_figures() -> None:
    first = "GPU KV cache size: 1,000 tokens\n"
    assert parse_engine_log(first + "GPU KV cache size: 2,000 tokens").kv_cache_tokens == 2000


def test_nothing_to_read() -> None:
    assert parse_engine_log("") == EngineAllocation()


def calibration_rows() -> list[dict[str, str]]:
    with open(CALIBRATION, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


# Rows of the calibration sweep (vLLM 0.19 on one H100; /work/shared/calibration/README.md),
# whose log_line column rebuilds vLLM's wording around the figure parsed from the real log.
SWEEP_ROWS = [
    {
        "quantity": "weights_per_gpu",
        "log_line": "Model loading took 14.99 GiB memory",
        "value": "14.99",
    },
    {
        "quantity": "kv_bytes_per_token_per_gpu",
        "log_line": "Available KV cache memory: 58.11 GiB / GPU KV cache size: 476,016 tokens",
        "value": "131077.8154",
    },
    {
        "quantity": "kv_tokens_at_engine_budget",
        "log_line": "GPU KV cache size: 1,044,688 tokens",
        "value": "1044688",
    },
]


def check_rows(rows: list[dict[str, str]]) -> int:
    checked = 0
    for row in rows:
        a = parse_engine_log(row["log_line"])
        value = float(row["value"])
        if row["quantity"] == "weights_per_gpu":
            assert a.weights_gib == value, row
        elif row["quantity"] == "kv_tokens_at_engine_budget":
            assert a.kv_cache_tokens == value, row
        elif row["quantity"] == "kv_bytes_per_token_per_gpu":
            assert a.kv_cache_gib is not None and a.kv_cache_tokens is not None, row
            measured = a.kv_cache_gib * 2**30 / a.kv_cache_tokens
            assert measured == pytest.approx(value, rel=1e-6), row
        else:
            continue
        checked += 1
    return checked


def test_calibration_rows_read_back() -> None:
    assert check_rows(SWEEP_ROWS) == 3


def test_whole_calibration_sweep_reads_back() -> None:
    """Every figure of the H100 sweep is what the parser reads from its log line."""
    assert check_rows(calibration_rows()) >= 30


METRICS = """# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",\
cpu_offload_gb="0",enable_prefix_caching="True",gpu_memory_utilization="0.82",\
is_attention_free="False",num_cpu_blocks="1024",num_gpu_blocks="573",\
num_gpu_blocks_override="None",sliding_window="None",swap_space_bytes="4294967296"} 1.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="qwen3-32b"} 0.0
"""


def test_cache_config_info_labels() -> None:
    labels = parse_cache_config_info(METRICS)
    assert labels["num_gpu_blocks"] == "573" and labels["block_size"] == "16"
    assert kv_tokens_from_metrics(labels) == 573 * 16
    newer = 'vllm:cache_config_info{block_size="16",kv_cache_size_tokens="314187"} 1.0'
    assert kv_tokens_from_metrics(parse_cache_config_info(newer)) == 314187
    assert parse_cache_config_info("vllm:num_requests_running 0") == {}


def test_engine_from_probe_answers() -> None:
    assert engine_from({"/version": {"version": "0.32.0"}}).engine == "vllm"
    sglang = engine_from({"/get_server_info": {"version": "0.5.4"}, "/version": {"x": 1}})
    assert (sglang.engine, sglang.version) == ("sglang", "0.5.4")
    assert engine_from({"/props": {"total_slots": 1}}).engine == "llama.cpp"
    assert engine_from({"/version": "not a dict"}).engine is None


def test_core_and_pure_serving_modules_import_no_http_client() -> None:
    """The core install stays free of aiohttp and httpx: only the client/server/load modules
    import them."""
    code = (
        "import sys, pytest_gpufit, pytest_gpufit.plugin, pytest_gpufit.serving, "
        "pytest_gpufit.serving.facts, pytest_gpufit.serving.errors; "
        "print(sorted(m for m in ('aiohttp', 'httpx', 'torch') if m in sys.modules))"
    )
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    assert out.stdout.strip() == "[]"
