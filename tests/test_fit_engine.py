"""The fit engine: parameter counts, memory estimates, verdicts, bad input."""

from __future__ import annotations

import csv
import json
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.estimate import (
    RUNTIME_OVERHEAD_BYTES,
    estimate,
    fit_on,
    precision_support,
)
from pytest_gpufit.fit.spec import load_spec, shipped_models, spec_from_config
from pytest_gpufit.hardware.catalog import catalog_gpu

PUBLISHED = yaml.safe_load(
    resources.files("pytest_gpufit.fit").joinpath("models/published.yaml").read_text()
)


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_total_parameters_within_1_percent_of_published(model: str) -> None:
    spec = load_spec(model)
    assert spec.params.total == pytest.approx(PUBLISHED[model]["total"], rel=0.01)


@pytest.mark.parametrize("model", sorted(m for m in PUBLISHED if "active" in PUBLISHED[m]))
def test_moe_active_parameters_within_3_percent_of_published(model: str) -> None:
    spec = load_spec(model)
    published = PUBLISHED[model]
    ours = (
        spec.params.active
        if published["active_convention"] == "with_embeddings"
        else spec.params.active_compute
    )
    assert ours == pytest.approx(published["active"], rel=0.03)
    assert spec.params.active < spec.params.total / 3


def test_every_shipped_config_has_a_published_count() -> None:
    assert set(PUBLISHED) == {k for k in shipped_models() if "/" not in k}


def test_shipped_ids_and_hub_ids_resolve() -> None:
    assert load_spec("Qwen/Qwen3-30B-A3B").params == load_spec("qwen3-30b-a3b").params


@pytest.mark.parametrize(
    "model_type",
    [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3_text",
        "qwen3_moe",
        "qwen2_moe",
        "mixtral",
        "deepseek_v3",
        "gpt_oss",
    ],
)
def test_parameter_count_is_exact_against_a_real_transformers_model(model_type: str) -> None:
    pytest.importorskip("transformers")
    from tiny_models import build_model

    model = build_model(model_type)
    real = sum(p.numel() for p in model.parameters())
    assert spec_from_config(model.config.to_dict()).params.total == real


def test_weights_bytes_are_exact_from_safetensors_headers(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from safetensors import safe_open
    from tiny_models import save_checkpoint

    folder = save_checkpoint(tmp_path / "tiny", "qwen3_moe")
    actual = 0
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
            tensor = handle.get_tensor(name)
            actual += tensor.numel() * tensor.element_size()
    spec = load_spec(folder)
    stored = estimate(spec, "stored")
    assert stored.weights_bytes == actual
    assert "safetensors headers" in stored.weights_source
    fp32 = estimate(spec, "fp32")
    assert fp32.weights_bytes == 2 * actual and "exact" in fp32.weights_source
    assert estimate(spec, "bf16").weights_bytes == actual


def test_llama_8b_figures_by_hand() -> None:
    e = estimate(load_spec("llama-3.1-8b"), "bf16", context=8192)
    assert e.weights_bytes == 2 * 8_030_261_248
    assert e.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2  # layers x (k, v) x heads x dim x bytes
    assert e.kv_cache_bytes == 8192 * e.kv_bytes_per_token
    assert e.total_bytes == (
        e.weights_bytes + e.kv_cache_bytes + e.activation_bytes + e.overhead_bytes
    )
    assert e.overhead_bytes >= RUNTIME_OVERHEAD_BYTES


def test_mla_caches_the_latent_not_full_heads() -> None:
    e = estimate(load_spec("deepseek-v3"), "stored", context=4096)
    assert e.kv_bytes_per_token == 61 * (512 + 64) * 2
    assert e.weight_format == "fp8"


def test_sliding_window_layers_keep_only_the_window() -> None:
    spec = load_spec("gpt-oss-20b")
    short, long = estimate(spec, "stored", context=128), estimate(spec, "stored", context=65536)
    per_layer_token = 2 * 8 * 64 * 2
    assert long.kv_cache_bytes == per_layer_token * (12 * 65536 + 12 * 128)
    assert short.kv_cache_bytes == per_layer_token * 24 * 128


def test_quantized_checkpoints_as_stored() -> None:
    gpt = estimate(load_spec("gpt-oss-120b"), "stored")
    assert gpt.weight_format == "mxfp4"
    assert 60e9 < gpt.weights_bytes < 70e9  # the published checkpoint is ~65 GB
    ds = estimate(load_spec("deepseek-v3"), "stored")
    assert 650e9 < ds.weights_bytes < 700e9  # ~1 byte per parameter plus bf16 embeddings


def test_the_user_question_qwen3_30b_unquantized_on_one_rtx_pro_6000() -> None:
    spec = load_spec("qwen3-30b-a3b")
    e = estimate(spec, "bf16", context=32768)
    fit = fit_on(spec, e, catalog_gpu("rtx-pro-6000-blackwell"))
    assert fit.fits and fit.instances == 1 and fit.precision_support == "native"
    assert fit.max_context == 40960
    llama70 = load_spec("llama-3.1-70b")
    e70 = estimate(llama70, "bf16")
    assert not fit_on(llama70, e70, catalog_gpu("rtx-pro-6000-blackwell")).fits
    two = fit_on(llama70, e70, catalog_gpu("rtx-pro-6000-blackwell"), count=2)
    assert two.fits and two.per_card_bytes < e70.total_bytes


def test_decode_ceiling_is_bandwidth_over_bytes_read() -> None:
    spec = load_spec("qwen3-30b-a3b")
    e = estimate(spec, "bf16", context=1)
    gpu = catalog_gpu("h100-sxm")
    fit = fit_on(spec, e, gpu)
    assert fit.decode_tok_s_ceiling == pytest.approx(3.35e12 / e.decode_bytes_per_token, rel=1e-3)
    # Only active experts are read: far faster than reading all 61 GB of weights.
    assert fit.decode_tok_s_ceiling > 3 * 3.35e12 / e.weights_bytes


@pytest.mark.parametrize(
    ("fmt", "card", "support"),
    [
        ("bf16", "t4", "emulated"),
        ("bf16", "a100-80gb", "native"),
        ("fp8", "a100-80gb", "emulated"),
        ("fp8", "h100-sxm", "native"),
        ("mxfp4", "h100-sxm", "emulated"),
        ("nvfp4", "rtx-pro-6000-blackwell", "native"),
        ("int4", "h100-sxm", "emulated"),
        ("fp8", "t4", "unsupported"),
        ("nvfp4", "mi300x", "unsupported"),
    ],
)
def test_precision_support(fmt: str, card: str, support: str) -> None:
    assert precision_support(fmt, catalog_gpu(card)) == support


PRECISION_ORDER = ["fp32", "bf16", "int8", "fp8", "nvfp4", "mxfp4", "int4"]
MODELS = sorted(PUBLISHED)


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    context=st.integers(1, 65536),
    batch=st.integers(1, 8),
    more=st.integers(1, 4096),
)
def test_estimate_grows_with_context_and_batch(
    model: str, context: int, batch: int, more: int
) -> None:
    spec = load_spec(model)
    base = estimate(spec, "bf16", context, batch).total_bytes
    assert estimate(spec, "bf16", context + more, batch).total_bytes >= base
    assert estimate(spec, "bf16", context, batch + 1).total_bytes > base


@settings(max_examples=40, deadline=None)
@given(model=st.sampled_from(MODELS), context=st.integers(1, 32768))
def test_a_lower_precision_never_needs_more_memory(model: str, context: int) -> None:
    spec = load_spec(model)
    totals = [estimate(spec, p, context).weights_bytes for p in PRECISION_ORDER]
    assert totals == sorted(totals, reverse=True)


@settings(max_examples=40, deadline=None)
@given(model=st.sampled_from(MODELS), card=st.sampled_from(["rtx-4090", "h100-sxm", "h200"]))
def test_max_context_is_the_largest_that_fits(model: str, card: str) -> None:
    spec = load_spec(model)
    gpu = catalog_gpu(card)
    fit = fit_on(spec, estimate(spec, "bf16", 1024), gpu)
    if fit.max_context:
        assert fit_on(spec, estimate(spec, "bf16", fit.max_context), gpu).fits
        if fit.max_context < (spec.max_position_embeddings or 0):
            assert not fit_on(spec, estimate(spec, "bf16", fit.max_context + 1), gpu).fits


# ---- bad input ---------------------------------------------------------------------------


def test_malformed_json_names_the_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text('{\n  "hidden_size": 64,\n  oops\n}')
    with pytest.raises(GpufitError, match=r"config\.json:3:3: malformed JSON"):
        load_spec(bad)


def test_missing_model_names_the_path_and_shipped_ids(tmp_path: Path) -> None:
    with pytest.raises(
        GpufitError,
        match=r"no such file or folder .*not a shipped model id "
        r"\(deepseek-v3, gpt-oss-120b",
    ):
        load_spec(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GpufitError, match="needs a config.json"):
        load_spec(tmp_path / "empty")


@pytest.mark.parametrize("model", ["x" * 5000, "~nosuchuser-gpufit/model"])
def test_unusable_model_paths_are_one_error(model: str) -> None:
    with pytest.raises(GpufitError, match="not a usable path|no such file or folder"):
        load_spec(model)


def test_unknown_model_type_with_generic_fields_warns(tmp_path: Path) -> None:
    config = {
        "model_type": "falcon9",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 100,
    }
    spec = spec_from_config(config)
    assert spec.params.total > 0
    assert any("unknown model_type 'falcon9'" in w for w in spec.warnings)
    del config["vocab_size"], config["intermediate_size"]
    with pytest.raises(GpufitError, match="intermediate_size, vocab_size are missing"):
        spec_from_config(config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context": 0}, "context must be a whole number"),
        ({"batch": -1}, "batch must be a whole number"),
        ({"batch": True}, "batch must be a whole number >= 1, got True"),
        ({"context": 2.5}, "context must be a whole number"),
        ({"dtype": 16}, "precision must be a string such as 'bf16', got 16"),
        ({"dtype": "fp7"}, "unknown precision 'fp7'; accepted: fp32, bf16"),
        ({"kv_dtype": "int2"}, "unknown KV cache dtype 'int2'; accepted: fp32"),
    ],
)
def test_bad_estimate_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(GpufitError, match=message):
        estimate(load_spec("qwen3-0.6b"), **kwargs)  # type: ignore[arg-type]


def test_config_json_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(GpufitError, match="must be a JSON object"):
        load_spec(path)


def test_awq_int4_checkpoint_as_stored() -> None:
    config = json.loads(
        (
            Path(__file__).parent.parent
            / "pytest_gpufit"
            / "fit"
            / "models"
            / "meta-llama__Llama-3.1-8B.json"
        ).read_text()
    )
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    spec = spec_from_config(config)
    stored = estimate(spec, "stored")
    assert stored.weight_format == "int4"
    p = spec.params
    expected = p.linear * (0.5 + 2.5 / 128) + (p.embedding + p.lm_head + p.norms) * 2
    assert stored.weights_bytes == pytest.approx(expected, rel=1e-6)
    config["quantization_config"]["bits"] = 3
    with pytest.raises(GpufitError, match="3-bit awq is not supported"):
        spec_from_config(config)


# ---- issue 12: tensor parallelism, usable memory, ignore lists, engine plans -----------------

CALIBRATION_CONFIGS = Path(__file__).parent.parent / "fixtures" / "calibration" / "configs"


def test_mla_latent_is_whole_on_every_tensor_parallel_rank() -> None:
    """vLLM keeps DeepSeek's 576-wide latent on every rank: R1/V3 at TP 8 is 70,272 B/token per
    GPU, not 8,784 (the issue's measured 70,271)."""
    from pytest_gpufit.fit.estimate import kv_bytes_per_token_per_gpu

    spec = load_spec("deepseek-v3")
    assert kv_bytes_per_token_per_gpu(spec, 2, 8) == 61 * 576 * 2 == 70_272
    lite = load_spec(str(CALIBRATION_CONFIGS / "deepseek-ai__DeepSeek-V2-Lite-Chat.json"))
    assert {kv_bytes_per_token_per_gpu(lite, 2, tp) for tp in (1, 2, 4)} == {27 * 576 * 2}


def test_gqa_kv_heads_are_replicated_when_tp_exceeds_them() -> None:
    from pytest_gpufit.fit.estimate import kv_bytes_per_token_per_gpu

    spec = load_spec("llama-3.1-70b")  # 8 KV heads of 128, 80 layers
    assert kv_bytes_per_token_per_gpu(spec, 2, 8) == 80 * 2 * 1 * 128 * 2
    assert kv_bytes_per_token_per_gpu(spec, 2, 16) == 80 * 2 * 1 * 128 * 2  # not half of it


def test_per_card_need_of_a_tp_setup_keeps_the_mla_cache_whole() -> None:
    """The plain verdict uses the same physics: on 8 cards DeepSeek-V3's cache is not / 8."""
    from pytest_gpufit.fit.estimate import per_card_bytes

    spec = load_spec("deepseek-v3")
    est = estimate(spec, "fp8", 8192)
    grown = per_card_bytes(spec, est, 8, 16384) - per_card_bytes(spec, est, 8, 8192)
    assert grown > 8192 * 61 * 576 * 2  # the whole latent of 8192 more tokens, per card


SWEEP = CALIBRATION_CONFIGS.parent / "vllm-0.19-h100-sweep.tsv"


def _sweep(quantity: str) -> list[dict[str, str]]:
    """The published vLLM 0.19 log figures on an H100 (fixtures/calibration/README.md)."""
    with SWEEP.open(encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle, delimiter="\t") if r["quantity"] == quantity]


def test_runtime_per_rank_at_tp_2_is_the_measured_nccl_and_context() -> None:
    """The logs' CUDA context + non-torch memory: 0.76 GiB at TP 1; at TP >= 2 the NCCL and
    all-reduce buffers make it 3.60-4.08 GiB per rank."""
    from pytest_gpufit.fit.estimate import per_card_bytes, runtime_bytes_per_gpu

    logged = {
        (r["model"], int(r["tensor_parallel"])): float(r["value"])
        for r in _sweep("runtime_nonweight_nonkv_per_gpu")
    }
    at_one = {v for (_, tp), v in logged.items() if tp == 1}
    at_more = sorted(v for (_, tp), v in logged.items() if tp >= 2)
    assert len(at_more) == 3
    for value in at_one:
        assert runtime_bytes_per_gpu(1) / 2**30 == pytest.approx(value, rel=0.04)
    assert at_more[0] <= runtime_bytes_per_gpu(2) / 2**30 <= at_more[-1]
    assert runtime_bytes_per_gpu(4) == runtime_bytes_per_gpu(2)
    spec = load_spec("llama-3.1-8b")
    est = estimate(spec, "bf16", 1)
    one = per_card_bytes(spec, est, 1, 1)
    two = per_card_bytes(spec, est, 2, 1)
    assert two > runtime_bytes_per_gpu(2)
    assert one - runtime_bytes_per_gpu(1) > two - runtime_bytes_per_gpu(2)  # the rest is split


def test_verdict_uses_the_usable_memory_not_nvml_total() -> None:
    """What CUDA can allocate on an H100 80GB, as vLLM's log says it (total_memory=79.19GiB),
    not NVML's 79.65 GiB."""
    from pytest_gpufit.fit.estimate import usable_bytes

    (row,) = _sweep("usable_device_memory")
    match = re.search(r"total_memory=([\d.]+)GiB", row["log_line"])
    assert match, row["log_line"]
    h100 = catalog_gpu("h100-sxm")
    usable, source = usable_bytes(h100)
    assert source == "catalog usable_mib"
    assert usable / 2**30 == pytest.approx(float(match[1]), abs=0.005)  # the log's 2 decimals
    assert usable < h100.memory_total_bytes
    fit = fit_on(load_spec("llama-3.1-8b"), estimate(load_spec("llama-3.1-8b")), h100)
    assert fit.usable_bytes == usable
    assert fit.headroom_bytes == fit.usable_bytes - fit.per_card_bytes
    t4 = catalog_gpu("t4")  # no measured figure: 1% below NVML
    assert usable_bytes(t4)[0] == t4.memory_total_bytes - t4.memory_total_bytes // 100


def test_ignore_list_keeps_attention_and_edge_layers_in_bf16() -> None:
    """Meta's 405B FP8 keeps attention and layers 0 and 125 in bf16: counted module by
    module, not as all-fp8 (the issue's -17%)."""
    spec = load_spec(str(CALIBRATION_CONFIGS / "meta-llama__Llama-3.1-405B-Instruct-FP8.json"))
    assert spec.quantization is not None
    kept = dict(spec.quantization.unquantized)
    assert kept["attention"] == spec.params.attention
    assert kept["dense_mlp"] == 2 * 3 * 16384 * 53248
    stored = estimate(spec, "stored").weights_bytes
    all_fp8 = estimate(spec, "fp8").weights_bytes
    assert stored > 1.15 * all_fp8


def test_ignore_list_patterns() -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "config_groups": {"g": {"weights": {"num_bits": 8, "type": "int"}}},
            "ignore": ["lm_head", "re:.*layers\\.0\\..*", "model.layers.2.self_attn"],
        },
    }
    spec = spec_from_config(config)
    assert spec.quantization is not None and spec.quantization.dtype == "int8"
    kept = dict(spec.quantization.unquantized)
    attn_layer = 64 * 4 * 16 * 2 + 2 * 64 * 2 * 16
    assert kept == {"attention": 2 * attn_layer, "dense_mlp": 3 * 64 * 128}


def test_vllm_pads_gpt_oss_mxfp4_experts() -> None:
    """Resident weights 13.64 GiB at TP 1 on an H100, 6.6% above the checkpoint: the Marlin
    MoE kernel's n % 256 / k % 128 padding (Mxfp4MoEMethod.create_weights)."""
    from pytest_gpufit.engines.knobs import parse_knobs
    from pytest_gpufit.engines.planning import mxfp4_padding, plan

    spec = load_spec("gpt-oss-20b")
    assert mxfp4_padding(spec, 1) == pytest.approx(3072 * 2944 / (2880 * 2880))
    p = plan(spec, "stored", catalog_gpu("h100-sxm"), 1, parse_knobs("vllm"))
    assert p.weights_bytes_per_gpu / 2**30 == pytest.approx(13.64, rel=0.01)


@pytest.mark.parametrize(
    ("engine", "raw", "message"),
    [
        ("vllm", {"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization must be a fraction"),
        ("vllm", {"gpu_memory_utilization": "nan"}, "above 0 and at most 1"),
        ("vllm", {"gpu_memory_utilization": 0}, "above 0 and at most 1"),
        ("vllm", {"gpu_memory_utilization": True}, "above 0 and at most 1"),
        ("sglang", {"mem_fraction_static": "1.2"}, "--mem-fraction-static must be"),
        ("vpllm", {}, "unknown engine 'vpllm'"),
        ("vllm", {"max_model_len": "８１９２"}, "--max-model-len must be a whole number"),
        ("vllm", {"max_num_seqs": -1}, "--max-num-seqs must be a whole number"),
        ("vllm", {"max_num_seqs": 10**12}, "from 1 to 1,000,000"),
        ("vllm", {"kv_cache_dtype": "int3"}, "not a vllm KV cache type"),
        ("llama.cpp", {"ctx_size": "4k"}, "-c/--ctx-size must be a whole number"),
        ("llama.cpp", {"enforce_eager": True}, "does not apply to llama.cpp"),
        ("vllm", {"swap_space": 4}, "unknown vllm knob 'swap_space'"),
    ],
)
def test_bad_engine_knobs_are_one_error(engine: str, raw: dict[str, object], message: str) -> None:
    from pytest_gpufit.engines.knobs import parse_knobs

    with pytest.raises(GpufitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_knobs(engine, **raw)


def test_tp_that_does_not_divide_the_heads_is_refused() -> None:
    from pytest_gpufit.engines.knobs import parse_knobs
    from pytest_gpufit.engines.planning import plan

    spec = load_spec("llama-3.1-8b")
    with pytest.raises(GpufitError, match="3 GPUs do not divide the 32 attention heads"):
        plan(spec, "bf16", catalog_gpu("h100-sxm"), 3, parse_knobs("vllm"))
    odd = spec_from_config(
        {
            "model_type": "llama",
            "hidden_size": 768,
            "intermediate_size": 2048,
            "num_hidden_layers": 2,
            "num_attention_heads": 12,
            "num_key_value_heads": 4,
            "vocab_size": 1000,
        }
    )
    with pytest.raises(GpufitError, match="6 GPUs and the 4 KV heads"):
        plan(odd, "bf16", catalog_gpu("h100-sxm"), 6, parse_knobs("vllm"))
    assert plan(odd, "bf16", catalog_gpu("h100-sxm"), 12, parse_knobs("vllm")).starts


def test_vllm_plan_log_lines_and_knobs() -> None:
    from pytest_gpufit.engines.knobs import parse_knobs
    from pytest_gpufit.engines.planning import plan

    spec = load_spec("llama-3.1-8b")
    gpu = catalog_gpu("h100-sxm")
    p = plan(spec, "bf16", gpu, 1, parse_knobs("vllm", max_model_len=8192))
    assert p.starts and p.kv_cache_tokens % 16 == 0
    lines = "\n".join(p.log_lines())
    assert f"GPU KV cache size: {p.kv_cache_tokens:,} tokens" in lines
    assert "Maximum concurrency for 8,192 tokens per request" in lines
    assert "Model loading took 14.99 GiB memory" in lines
    more = plan(spec, "bf16", gpu, 1, parse_knobs("vllm", gpu_memory_utilization=0.95))
    assert more.kv_cache_tokens > p.kv_cache_tokens
    eager = plan(spec, "bf16", gpu, 1, parse_knobs("vllm", enforce_eager=True))
    assert eager.cuda_graph_bytes_per_gpu == 0 < p.cuda_graph_bytes_per_gpu
    fp8 = plan(spec, "bf16", gpu, 1, parse_knobs("vllm", kv_cache_dtype="fp8"))
    assert fp8.kv_bytes_per_token_per_gpu * 2 == p.kv_bytes_per_token_per_gpu


def test_vllm_refuses_a_max_model_len_beyond_the_model_or_the_cache() -> None:
    from pytest_gpufit.engines.knobs import parse_knobs
    from pytest_gpufit.engines.planning import plan

    spec = load_spec("llama-3.1-8b")
    too_long = plan(
        spec, "bf16", catalog_gpu("h100-sxm"), 1, parse_knobs("vllm", max_model_len=10**6)
    )
    assert not too_long.starts and "max_position_embeddings" in (too_long.reason or "")
    small = plan(spec, "bf16", catalog_gpu("rtx-4090"), 1, parse_knobs("vllm"))
    assert not small.starts and "one request of max_model_len 131,072" in (small.reason or "")


@pytest.mark.parametrize("engine", ["sglang", "llama.cpp", "transformers"])
def test_other_engines_plan_and_refuse_what_cannot_fit(engine: str) -> None:
    from pytest_gpufit.engines.knobs import parse_knobs
    from pytest_gpufit.engines.planning import plan

    fits = plan(load_spec("llama-3.1-8b"), "bf16", catalog_gpu("h100-sxm"), 1, parse_knobs(engine))
    assert fits.starts and fits.kv_cache_tokens > 0 and fits.log_lines()
    big = plan(load_spec("llama-3.1-70b"), "bf16", catalog_gpu("rtx-4090"), 1, parse_knobs(engine))
    assert not big.starts and big.reason


@pytest.mark.parametrize(
    ("engine", "kv", "size"),
    [("transformers", "int8", 1), ("transformers", "fp32", 4), ("sglang", "fp8_e5m2", 1)],
)
def test_every_engine_honours_its_kv_cache_dtype(engine: str, kv: str, size: int) -> None:
    from pytest_gpufit.engines.knobs import parse_knobs
    from pytest_gpufit.engines.planning import plan

    p = plan(
        load_spec("llama-3.1-8b"),
        "bf16",
        catalog_gpu("h100-sxm"),
        1,
        parse_knobs(engine, kv_cache_dtype=kv),
    )
    assert p.kv_bytes_per_token_per_gpu == 32 * 2 * 8 * 128 * size


def test_catalog_usable_memory_is_a_number_below_nvml_total() -> None:
    from pytest_gpufit.hardware.catalog import catalog

    entries = {k: v for k, v in catalog().items() if "usable_mib" in v}
    assert "h100-sxm" in entries
    for entry in entries.values():
        usable = entry["usable_mib"]
        assert isinstance(usable, int) and 0 < usable <= entry["memory_mib"]


def test_mxfp4_padding_by_moe_backend() -> None:
    """Mxfp4MoEMethod.create_weights: Marlin rounds gpt-oss's hidden 2,880 up to 3,072 and the
    intermediate per rank to 128; Triton only the intermediate, to 64 (plus its Hopper
    swizzle); FlashInfer TRT-LLM both to 256, CUTLASS both to 128."""
    from pytest_gpufit.engines.knobs import parse_knobs
    from pytest_gpufit.engines.planning import mxfp4_padding, plan

    spec = load_spec("gpt-oss-120b")
    assert mxfp4_padding(spec, 1, "marlin") == pytest.approx(3072 * 2944 / (2880 * 2880))
    assert mxfp4_padding(spec, 1, "triton") == 1.0
    assert mxfp4_padding(spec, 2, "triton") == pytest.approx(1472 / 1440)
    assert mxfp4_padding(spec, 1, "flashinfer-trtllm") == pytest.approx((3072 / 2880) ** 2)
    weights = {
        backend: plan(
            spec, "stored", catalog_gpu("h100-sxm"), 1, parse_knobs("vllm", moe_backend=backend)
        ).weights_bytes_per_gpu
        for backend in ("marlin", "triton", "flashinfer-trtllm", "flashinfer-cutlass")
    }
    assert weights["flashinfer-cutlass"] < weights["triton"] < weights["marlin"]
    assert weights["marlin"] < weights["flashinfer-trtllm"]
    default = plan(spec, "stored", catalog_gpu("h100-sxm"), 1, parse_knobs("vllm"))
    assert default.weights_bytes_per_gpu == weights["marlin"] and default.moe_backend == "marlin"
    # A dense model has no MXFP4 experts: no backend to name.
    dense = plan(load_spec("llama-3.1-8b"), "bf16", catalog_gpu("h100-sxm"), 1, parse_knobs("vllm"))
    assert dense.moe_backend == ""


def test_moe_backend_knob_is_checked() -> None:
    from pytest_gpufit.engines.knobs import parse_knobs

    assert parse_knobs("vllm", moe_backend=" Triton ").moe_backend == "triton"
    with pytest.raises(GpufitError, match="--moe-backend 'cuda' is not a vllm MoE backend"):
        parse_knobs("vllm", moe_backend="cuda")
    with pytest.raises(GpufitError, match="--moe-backend does not apply to sglang"):
        parse_knobs("sglang", moe_backend="triton")


def test_cpu_estimate_counts_no_cuda_runtime() -> None:
    """A served CPU target's estimate counted the 768 MiB CUDA runtime: 'est total 0.8 GB' for a
    0.6 MB model."""
    spec = load_spec("qwen3-0.6b")
    gpu = estimate(spec, "bf16", 256)
    cpu = estimate(spec, "bf16", 256, device="cpu")
    assert gpu.overhead_bytes >= 768 * 2**20
    assert cpu.overhead_bytes == 0
    assert cpu.total_bytes == cpu.weights_bytes + cpu.kv_cache_bytes + cpu.activation_bytes
