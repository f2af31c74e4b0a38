"""The fit engine: parameter counts, memory estimates, verdicts, bad input."""

from __future__ import annotations

import json
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
