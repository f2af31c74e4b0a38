"""A config.json field that is negative, zero, non-numeric, a bool or absurd is one error naming
the file, line and field: through ``gpufit fit``, a suite's ``fits`` check and ``requires_fit``.
None of them may turn into an estimate (a negative one "fits" anything)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_probe import catalog_probe
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_gpufit.cli import main
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.config_fields import MAXIMA
from pytest_gpufit.fit.estimate import estimate
from pytest_gpufit.fit.spec import load_spec, spec_from_config

GPUFIT = Path(sys.executable).with_name("gpufit")

LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 100,
    "max_position_embeddings": 256,
    "torch_dtype": "bfloat16",
}
MOE = {**LLAMA, "model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2}
MLA = {**LLAMA, "model_type": "deepseek_v3", "kv_lora_rank": 16, "qk_nope_head_dim": 8}

# (base config, changes, the message's tail after "config.json:LINE: ")
BAD_FIELDS = [
    (
        LLAMA,
        {"intermediate_size": -28672},
        "field 'intermediate_size' must be a whole number from 1 to 10,000,000; got -28672",
    ),
    (LLAMA, {"hidden_size": 0}, "field 'hidden_size' must be a whole number from 1 to 1,000,000"),
    (LLAMA, {"head_dim": "sixteen"}, "field 'head_dim' must be a whole number from 1 to 100,000; "),
    (LLAMA, {"num_hidden_layers": True}, "field 'num_hidden_layers' must be a whole number"),
    (LLAMA, {"vocab_size": 10**12}, "field 'vocab_size' must be a whole number from 1 to 10,000,0"),
    (LLAMA, {"hidden_size": 10**9}, "field 'hidden_size' must be a whole number from 1 to 1,000,0"),
    (LLAMA, {"num_hidden_layers": 10**6}, "field 'num_hidden_layers' must be a whole number from"),
    (LLAMA, {"num_attention_heads": 2.5}, "field 'num_attention_heads' must be a whole number"),
    (LLAMA, {"max_position_embeddings": float("nan")}, "'max_position_embeddings' must be a whole"),
    (LLAMA, {"num_key_value_heads": 3}, "field 'num_key_value_heads' must divide num_attention_"),
    (LLAMA, {"hidden_size": 2, "head_dim": None}, "field 'hidden_size' must be at least num_atten"),
    (LLAMA, {"intermediate_size": None}, "field 'intermediate_size' is required: a whole number"),
    (LLAMA, {"tie_word_embeddings": "false"}, "field 'tie_word_embeddings' must be true or false"),
    (LLAMA, {"attention_bias": 1}, "field 'attention_bias' must be true or false; got 1"),
    (LLAMA, {"torch_dtype": 16}, "field 'torch_dtype' must be a string; got 16"),
    (
        LLAMA,
        {"torch_dtype": "fp7"},
        "field 'torch_dtype' must be one of bfloat16, float16, float32",
    ),
    (LLAMA, {"model_type": ["llama"]}, "field 'model_type' must be a string"),
    (LLAMA, {"sliding_window": -1}, "field 'sliding_window' must be a whole number from 0 to"),
    (
        LLAMA,
        {"sliding_window": 16, "layer_types": ["sliding_attention"]},
        "field 'layer_types' must name one type per layer: 2 (num_hidden_layers), not 1",
    ),
    (
        MOE,
        {"num_experts_per_tok": 8},
        "field 'num_experts_per_tok' must be at most num_experts (4)",
    ),
    (MOE, {"num_experts": -4}, "field 'num_experts' must be a whole number from 0 to 100,000"),
    (MOE, {"mlp_only_layers": [5]}, "field 'mlp_only_layers' must be a list of whole numbers from"),
    (MOE, {"moe_intermediate_size": 0}, "field 'moe_intermediate_size' must be a whole number"),
    (
        {**MOE, "model_type": "deepseek_v3"},
        {"first_k_dense_replace": 3},
        "field 'first_k_dense_replace' must be at most num_hidden_layers (2); got 3",
    ),
    (MLA, {}, "field 'qk_rope_head_dim' is required with kv_lora_rank (MLA attention)"),
    (LLAMA, {"quantization_config": "fp8"}, "field 'quantization_config' must be a JSON object"),
    (
        LLAMA,
        {"quantization_config": {"quant_method": "awq", "group_size": "128"}},
        "field 'quantization_config.group_size' must be a whole number from -1",
    ),
    (
        {"model_type": "llava", "text_config": {**LLAMA, "vocab_size": -5}},
        {},
        "field 'text_config.vocab_size' must be a whole number from 1",
    ),
]


def write_model(folder: Path, base: dict[str, Any], changes: dict[str, Any]) -> Path:
    config = {k: v for k, v in {**base, **changes}.items() if v is not None}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.mark.parametrize(("base", "changes", "message"), BAD_FIELDS)
def test_gpufit_fit_refuses_a_bad_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    base: dict[str, Any],
    changes: dict[str, Any],
    message: str,
) -> None:
    folder = write_model(tmp_path / "bad", base, changes)
    code = main(["fit", str(folder), "--gpu", "h100-sxm"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(f"gpufit: error: {folder / 'config.json'}:")
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_error_names_the_line_of_the_field(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "m", LLAMA, {"intermediate_size": -28672})
    line = 1 + (folder / "config.json").read_text().splitlines().index(
        '  "intermediate_size": -28672,'
    )
    with pytest.raises(GpufitError, match=rf"config\.json:{line}: field 'intermediate_size'"):
        load_spec(folder)


def test_real_configs_with_nulls_and_zeros_still_read() -> None:
    # What transformers writes: null head_dim and top-k, sliding_window 0, integral floats.
    spec = spec_from_config(
        {
            **MOE,
            "head_dim": None,
            "num_experts_per_tok": None,
            "sliding_window": 0,
            "hidden_size": 64.0,
            "first_k_dense_replace": 0,
            "n_shared_experts": 0,
            "torch_dtype": "torch.bfloat16",
        }
    )
    assert spec.hidden_size == 64 and spec.head_dim == 16 and spec.stored_dtype == "bf16"


@pytest.mark.skipif(not GPUFIT.exists(), reason="console script not installed")
def test_console_script_exits_2_with_one_line(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "neg", LLAMA, {"intermediate_size": -28672})
    done = subprocess.run(
        [str(GPUFIT), "fit", str(folder), "--gpu", "h100-sxm"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "field 'intermediate_size' must be a whole number" in done.stderr
    done = subprocess.run(
        [str(GPUFIT), "table", str(folder), "--gpus", "h100-sxm"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "field 'intermediate_size'" in done.stderr


SUITE = """
suite: bad
targets:
  - name: neg
    model: {model}
    weights: random
    dtype: bf16
    device: cpu
    checks:
      fits: {{}}
"""


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"intermediate_size": -28672}, "field 'intermediate_size' must be a whole number"),
        ({"head_dim": "sixteen"}, "field 'head_dim' must be a whole number"),
        ({"vocab_size": 10**12}, "field 'vocab_size' must be a whole number"),
    ],
)
def test_suite_fits_check_fails_naming_file_and_field(
    pytester: pytest.Pytester, changes: dict[str, Any], message: str
) -> None:
    folder = write_model(pytester.path / "neg", LLAMA, changes)
    pytester.makefile(".gpufit.yaml", bad=SUITE.format(model=folder))
    result = pytester.runpytest("-rfE")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0 and outcomes.get("skipped", 0) == 0
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) + outcomes.get("error", 0) == 1
    result.stdout.fnmatch_lines([f"*{folder / 'config.json'}:*{message}*"])
    assert "INTERNALERROR" not in result.stdout.str() and "Traceback" not in result.stdout.str()


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_requires_fit_on_a_bad_config_never_passes_or_skips(
    pytester: pytest.Pytester, policy: str
) -> None:
    write_model(pytester.path / "models" / "neg", LLAMA, {"intermediate_size": -28672})
    pytester.makepyfile("""
        from pytest_gpufit import requires_fit

        @requires_fit("models/neg")
        def test_model(): pass
    """)
    pytester.makeconftest(catalog_probe("h100-sxm"))  # a runner whose card would fit it
    result = pytester.runpytest("-rfE", f"--gpufit-on-missing={policy}")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0 and outcomes.get("skipped", 0) == 0
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    output = result.stdout.str() + result.stderr.str()
    assert re.search(r"neg\S*config\.json:.*field 'intermediate_size' must be a whole", output)
    assert "INTERNALERROR" not in output and "Traceback" not in output


FIELDS_READ = sorted(
    set(MAXIMA) - {"bits", "w_bit", "group_size", "q_group_size", "weight_block_size"}
    | {"tie_word_embeddings", "attention_bias", "use_sliding_window", "layer_types"}
    | {"torch_dtype", "dtype", "model_type", "mlp_only_layers", "quantization_config"}
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**15), max_value=10**15)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(
    base=st.sampled_from([LLAMA, MOE, {**MLA, "qk_rope_head_dim": 4}]),
    changes=st.dictionaries(st.sampled_from(FIELDS_READ), JSON_VALUES, min_size=1, max_size=3),
)
def test_any_value_in_any_field_is_an_error_or_a_positive_estimate(
    base: dict[str, Any], changes: dict[str, Any]
) -> None:
    try:
        spec = spec_from_config({**base, **changes})
    except GpufitError as error:
        assert "config.json" in str(error) and "\n" not in str(error)
        return
    est = estimate(spec, "bf16")
    assert spec.params.total > 0 and spec.params.active > 0
    assert est.weights_bytes > 0 and est.kv_cache_bytes > 0 and est.total_bytes > 0
