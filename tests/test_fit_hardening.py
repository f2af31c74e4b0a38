"""What users can type into the fit engine's newer knobs (rope scaling, engine logs), and the
figures held against what vLLM itself computes. Each fix's tests failed on the code before it
(checked); the unscaled rope types, Gemma 3, the shipped maxima and the docs tables are guards."""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit.cli import main
from pytest_gpufit.engines.knobs import parse_knobs
from pytest_gpufit.engines.planning import plan
from pytest_gpufit.engines.protocol import EnginePlan
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.context import (
    RopeScaling,
    check_context,
    parse_rope_scaling,
    scaled_maximum,
)
from pytest_gpufit.fit.logs import calibrate_text
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.hardware.catalog import catalog_gpu

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- rope scaling: numbers users type ---------------------------------------------------------


@pytest.mark.parametrize("spec", ["yarn:1e308:32768", "yarn:1e6:32768", "dynamic:1e300"])
def test_a_huge_factor_is_one_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    code, out, err = run(capsys, "fit", "qwen3-30b-a3b", "--gpu", "h100", "--rope-scaling", spec)
    assert code == 2 and out == ""
    assert "--rope-scaling" in err and "beyond 1,000,000,000" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("original", ["0", "00", "1000000001"])
def test_original_length_must_be_a_length(original: str) -> None:
    with pytest.raises(GpufitError, match=re.escape("original_max_position_embeddings must be")):
        parse_rope_scaling(f"yarn:4:{original}")


# ---- rope scaling written into config.json (as the Qwen3 card says to) -------------------------

QWEN3_YARN = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 32768,
}


def qwen_folder(tmp_path: Path, rope: object, model_type: str = "qwen3_moe") -> Path:
    config = json.loads(_shipped("qwen3-30b-a3b"))
    config["rope_scaling"] = rope
    config["model_type"] = model_type
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def _shipped(model: str) -> str:
    return Path(load_spec(model).path).read_text()


def test_a_yarn_block_in_config_json_extends_the_maximum_as_vllm_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = qwen_folder(tmp_path, QWEN3_YARN)
    spec = load_spec(folder)
    assert spec.max_position_embeddings == 131072  # 32,768 x 4: vLLM's derived maximum
    assert any("rope_scaling in config.json" in w for w in spec.warnings)
    code, out, err = run(
        capsys,
        "fit",
        str(folder),
        "--context",
        "131072",
        "--gpu",
        "2*rtx-pro-6000",
        "--engine",
        "vllm",
    )
    assert code == 0, err
    assert "Maximum concurrency for 131,072 tokens per request" in out
    # --hf-overrides replaces the block: the maximum is derived from the config's own 40,960.
    assert scaled_maximum(spec, RopeScaling("dynamic", 2.0)) == 81920


@pytest.mark.parametrize(
    ("rope", "maximum"),
    [
        ({"type": "dynamic", "factor": 2.0}, 81920),
        ({"rope_type": "linear", "factor": 2}, 81920),
        ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}, 40960),
        ({"rope_type": "longrope", "factor": 4.0}, 40960),
        ({"type": "su", "factor": 4.0}, 40960),
        ({"rope_type": "default"}, 40960),
        ({"type": "mrope", "mrope_section": [16, 24, 24]}, 40960),
        (None, 40960),
    ],
)
def test_every_rope_type_vllm_reads(tmp_path: Path, rope: object, maximum: int) -> None:
    assert load_spec(qwen_folder(tmp_path, rope)).max_position_embeddings == maximum


def test_gemma3_maximum_is_already_scaled(tmp_path: Path) -> None:
    """vLLM skips the factor for Gemma 3: its 131,072 already includes it."""
    folder = qwen_folder(tmp_path, {"rope_type": "linear", "factor": 8.0}, "gemma3_text")
    assert load_spec(folder).max_position_embeddings == 40960


def test_yarn_without_its_original_length_does_not_extend(tmp_path: Path) -> None:
    spec = load_spec(qwen_folder(tmp_path, {"rope_type": "yarn", "factor": 4.0}))
    assert spec.max_position_embeddings == 40960
    assert any("original_max_position_embeddings" in w for w in spec.warnings)


@pytest.mark.parametrize(
    ("rope", "message"),
    [
        (
            {"rope_type": "yarn", "factor": "four", "original_max_position_embeddings": 32768},
            "field 'rope_scaling.factor' must be a number above 0",
        ),
        ({"rope_type": "dynamic", "factor": -2}, "field 'rope_scaling.factor' must be"),
        ({"rope_type": "dynamic", "factor": 1e300}, "must give a maximum from 1 to 1,000,000,000"),
        (
            {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": -1},
            "field 'rope_scaling.original_max_position_embeddings' must be a whole number",
        ),
        ({"rope_type": 4, "factor": 4}, "field 'rope_scaling.rope_type' must be a string"),
        ("yarn", "field 'rope_scaling' must be a JSON object"),
    ],
)
def test_a_bad_rope_block_names_the_file_and_field(
    tmp_path: Path, rope: object, message: str
) -> None:
    folder = qwen_folder(tmp_path, rope)
    with pytest.raises(GpufitError, match=re.escape(message)) as caught:
        load_spec(folder)
    assert "config.json:" in str(caught.value)


def test_shipped_models_keep_their_maximum() -> None:
    """gpt-oss and DeepSeek-V3 (YaRN), Llama 3.1 (llama3): config's maximum == vLLM's."""
    for model, top in (
        ("gpt-oss-20b", 131072),
        ("deepseek-v3", 163840),
        ("llama-3.1-8b", 131072),
        ("qwen3-32b", 40960),
    ):
        assert load_spec(model).max_position_embeddings == top


def test_beyond_a_config_scaled_maximum_names_the_rope_scaling(tmp_path: Path) -> None:
    spec = load_spec(qwen_folder(tmp_path, QWEN3_YARN))
    with pytest.raises(GpufitError) as caught:
        check_context(spec, 262144)
    assert "maximum of 131,072 tokens" in str(caught.value)
    assert "max_position_embeddings 40,960 with its rope scaling" in str(caught.value)


@pytest.mark.parametrize("what", ["requires_fit context", "context"])
def test_the_hint_outside_the_cli_is_one_that_works_there(what: str) -> None:
    """requires_fit and a suite target take no --rope-scaling: the hint names what they take
    (a rope_scaling block in a copy of the model's config.json, read since this fix)."""
    with pytest.raises(GpufitError) as caught:
        check_context(load_spec("qwen3-30b-a3b"), 131072, what)
    message = str(caught.value)
    assert "--rope-scaling" not in message
    assert '"rope_scaling": {"rope_type": "yarn"' in message and "config.json" in message


# ---- vLLM's max concurrency: whole pages, and what a sliding layer reserves --------------------


def _vllm_plan(model: str, precision: str, **knobs: object) -> EnginePlan:
    return plan(
        load_spec(model), precision, catalog_gpu("h100-sxm"), 1, parse_knobs("vllm", **knobs)
    )


def test_concurrency_counts_whole_pages_per_request() -> None:
    """vLLM: num_blocks / cdiv(max_model_len, 16): a 1,000-token request holds 63 pages."""
    p = _vllm_plan("qwen3-30b-a3b", "bf16", max_model_len=1000)
    blocks = p.kv_cache_tokens // 16
    assert p.max_concurrency == round(blocks / 63, 2)
    assert f"Maximum concurrency for 1,000 tokens per request: {blocks / 63:.2f}x" in p.log


def test_sliding_layers_reserve_the_window_and_a_prefill_chunk() -> None:
    """gpt-oss: 12 full and 12 sliding (window 128) layers. vLLM's SlidingWindowSpec reserves
    cdiv(min(window - 1 + max_num_batched_tokens, max_model_len), 16) + 1 pages per layer, so at
    8,192 tokens a request holds 512 + 513 pages per layer pair: about half of the bare
    window's count (283.75x before this fix)."""
    p = _vllm_plan("gpt-oss-20b", "stored", max_model_len=8192)
    blocks = p.kv_cache_tokens // 16
    assert p.max_concurrency == round(blocks * 24 / (12 * 512 + 12 * 513), 2)
    assert 140 < p.max_concurrency < 150


def test_one_request_must_fit_its_pages_to_start() -> None:
    """vLLM's check_enough_kv_cache_memory counts the same pages: a budget that holds the bare
    window but not window - 1 + chunk + 1 page does not start."""
    spec = load_spec("gpt-oss-20b")
    p = _vllm_plan("gpt-oss-20b", "stored", max_model_len=131072)
    page_per_layer = p.kv_bytes_per_token_per_gpu * 16 // 24
    need = page_per_layer * (12 * 8192 + 12 * (-(-(127 + 8192) // 16) + 1))
    bare = p.kv_bytes_per_token_per_gpu * (12 * 131072 + 12 * 128) // 24
    assert need > bare
    util = (p.budget_bytes_per_gpu - p.kv_cache_bytes_per_gpu + (need + bare) // 2) / (
        p.usable_bytes_per_gpu
    )
    squeezed = plan(
        spec,
        "stored",
        catalog_gpu("h100-sxm"),
        1,
        parse_knobs("vllm", max_model_len=131072, gpu_memory_utilization=util),
    )
    assert not squeezed.starts and "to serve one request" in (squeezed.reason or "")


# ---- gpufit calibrate: a log held against the plan of the same setup ---------------------------

QWEN_LOG = """\
INFO 07-01 10:00:00 [gpu_model_runner.py:2000] Starting to load model Qwen/Qwen3-30B-A3B...
INFO 07-01 10:00:10 [gpu_model_runner.py:2100] Model loading took 56.88 GiB memory and 56.3 s
INFO 07-01 10:00:20 [gpu_worker.py:436] Available KV cache memory: 15.41 GiB
INFO 07-01 10:00:20 [kv_cache_utils.py:1319] GPU KV cache size: 168,288 tokens
INFO 07-01 10:00:20 [kv_cache_utils.py:1323] Maximum concurrency for 8,192 tokens per request: \
20.54x
"""


def test_the_concurrency_line_states_the_length_the_plan_runs_at() -> None:
    """The log's "Maximum concurrency for 8,192 tokens" was set beside the plan's figure at the
    model's 40,960 tokens (3.10x against 20.54x: -84.9%, a miss of the setup, not the model)."""
    result = calibrate_text(QWEN_LOG, "q.log", gpu=catalog_gpu("h100"), precision="bf16")
    assert result.knobs["max_model_len"] == 8192
    figure = next(f for f in result.figures if f.key == "max_concurrency")
    tokens = next(f for f in result.figures if f.key == "kv_cache_tokens")
    # At 8,192 tokens (512 pages) the plan's concurrency is its own tokens over 8,192.
    assert figure.predicted == round(tokens.predicted / 8192, 2)


def test_a_concurrency_at_another_length_than_the_setup_is_not_compared() -> None:
    log = QWEN_LOG.replace(
        "Starting to load", "Using max model len 40960\nINFO 07-01 [x.py:1] Starting to load"
    )
    result = calibrate_text(log, "q.log", gpu=catalog_gpu("h100"), precision="bf16")
    assert not any(f.key == "max_concurrency" for f in result.figures)
    assert any("max concurrency at 8192 tokens" in s for s in result.not_compared)


def test_a_log_of_two_engines_is_refused_not_read_as_one(tmp_path: Path) -> None:
    """An SGLang start and a vLLM start pasted into one file: the SGLang figures were held
    against a plan and the vLLM lines silently dropped."""
    sglang = (ROOT / "fixtures" / "engine-logs" / "sglang-qwen3-14b-tp4.log").read_text()
    for text in (sglang + QWEN_LOG, QWEN_LOG + sglang):
        with pytest.raises(GpufitError) as caught:
            calibrate_text(text, "mixed.log", model="qwen3-30b-a3b")
        message = str(caught.value)
        assert message.startswith("mixed.log: ")
        assert "sglang" in message and "vllm" in message and "one server's" in message


def test_a_log_from_another_card_than_gpu_is_not_held_against_it() -> None:
    """vLLM V0 states the card's memory (total_gpu_memory=79.15GiB: an H100 80GB); given as
    --gpu rtx-pro-6000 (95.6 GiB), its KV figures were held against the wrong card."""
    text = (ROOT / "fixtures" / "engine-logs" / "vllm-0.6-v0-bamba-profile.log").read_text()
    wrong = calibrate_text(text, "b.log", model="llama-3.1-8b", gpu=catalog_gpu("rtx-pro-6000"))
    assert not any(f.key in ("kv_cache_gib", "kv_cache_tokens") for f in wrong.figures)
    assert any("79.15 GiB" in n and "rtx-pro-6000-blackwell" in n for n in wrong.notes)
    assert any("the log's card" in s for s in wrong.not_compared)
    right = calibrate_text(text, "b.log", model="llama-3.1-8b", gpu=catalog_gpu("h100"))
    assert any(f.key == "kv_cache_gib" for f in right.figures)
    assert not any("79.15 GiB" in n for n in right.notes)


# ---- docs/fit.md holds the calibration benchmark's figures, not hand-kept ones -----------------


def _benchmark() -> Any:
    path = ROOT / "benchmarks" / "fit_calibration.py"
    spec = importlib.util.spec_from_file_location("fit_calibration_docs", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shown(text: str, value: float) -> bool:
    """``text`` is ``value`` as printed to ``text``'s decimals."""
    decimals = len(text.partition(".")[2])
    return abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-9


ACCURACY_ROWS = {
    "weights per GPU": "weights_per_gpu",
    "KV bytes/token per GPU": "kv_bytes_per_token_per_gpu",
    "GPU KV cache size (tokens)": "kv_tokens_at_engine_budget",
    "activation peak": "activation_peak_per_gpu",
    "runtime (context + non-torch)": "runtime_nonweight_nonkv_per_gpu",
}


def test_the_accuracy_table_is_the_benchmarks() -> None:
    """docs/fit.md's "Accuracy" table (median / worst |error| before -> after) against
    ``benchmarks/fit_calibration.py`` run now: a change to the plan that moves a figure fails
    here until the table is rewritten from the benchmark."""
    bench = _benchmark()
    records = bench.errors(bench.CALIBRATION)
    doc = (ROOT / "docs" / "fit.md").read_text()
    number = r"([0-9]+(?:\.[0-9]+)?)%"
    for label, quantity in ACCURACY_ROWS.items():
        row = re.search(
            rf"^\| {re.escape(label)} \| {number} / {number} \| {number} / {number} \|", doc, re.M
        )
        assert row, f"docs/fit.md has no accuracy row {label!r}"
        group = [r for r in records if r["quantity"] == quantity]
        for text, key, pick in zip(
            row.groups(),
            ("before_error", "before_error", "after_error", "after_error"),
            (statistics.median, max, statistics.median, max),
            strict=True,
        ):
            value = 100 * pick([abs(r[key]) for r in group])
            assert _shown(text, value), f"{label}: docs say {text}%, the benchmark {value:.3f}%"


def test_the_pcie_table_is_the_benchmarks() -> None:
    bench = _benchmark()
    records = bench.errors(bench.PCIE)
    doc = (ROOT / "docs" / "fit.md").read_text()
    rows = re.findall(
        r"^\| \[(?:calibration|held-out)\] [^|]+\| ([0-9.,]+)(?: GiB)? \| [^|]+ \| ([0-9.,]+)"
        r"(?: \(([-+]?[0-9.]+)%\))? \|",
        doc,
        re.M,
    )
    assert len(rows) == len(records) == 6
    for measured, after, error in rows:
        (record,) = [r for r in records if _shown(measured.replace(",", ""), r["measured"])]
        assert _shown(after.replace(",", ""), record["after"]), (measured, after, record)
        if error:
            assert _shown(error, 100 * record["after_error"]), (measured, error, record)


def test_hf_overrides_beyond_rope_scaling_are_refused_not_dropped() -> None:
    """vLLM applies every key of --hf-overrides: a max_position_embeddings next to the block
    moves its maximum (dynamic x2 over 8,192: 16,384), which gpufit would have ignored (81,920)."""
    text = (
        '{"rope_scaling": {"rope_type": "dynamic", "factor": 2}, "max_position_embeddings": 8192}'
    )
    with pytest.raises(GpufitError, match=r"--hf-overrides: .*max_position_embeddings"):
        parse_rope_scaling(text, "--hf-overrides")


def test_the_transformers_5_spelling_of_the_block() -> None:
    """transformers 5 writes rope_parameters (with rope_theta inside); --hf-overrides takes it
    as vLLM does, and rope_theta beside the block changes neither memory nor the maximum."""
    yarn = '"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 32768'
    for text in (
        f'{{"rope_parameters": {{{yarn}, "rope_theta": 1000000}}}}',
        f'{{"rope_scaling": {{{yarn}}}, "rope_theta": 1000000}}',
    ):
        assert parse_rope_scaling(text) == RopeScaling("yarn", 4.0, 32768)


def test_rope_parameters_in_config_json(tmp_path: Path) -> None:
    folder = qwen_folder(tmp_path, None)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {**QWEN3_YARN, "rope_theta": 1000000.0}
    (folder / "config.json").write_text(json.dumps(config))
    assert load_spec(folder).max_position_embeddings == 131072
