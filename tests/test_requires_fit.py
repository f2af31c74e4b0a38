"""``requires_fit`` through real pytest sessions."""

from __future__ import annotations

import json

import pytest
from fake_probe import catalog_probe


def test_fit_marker_on_the_users_card(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        from pytest_gpufit import requires_fit

        @requires_fit("qwen3-30b-a3b", dtype="bf16", context=32768)
        def test_qwen(): pass

        @requires_fit("llama-3.1-70b", dtype="bf16")
        def test_llama70(): pass

        @requires_fit("qwen3-32b", dtype="fp8", instances=2)
        def test_two_copies(): pass
    """)
    result = pytester.runpytest("-rs", "--gpufit-simulate=rtx-pro-6000-blackwell")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(
        [
            "*_card.py:3: simulated: would run on GPU0 NVIDIA RTX PRO 6000*",
            "*_card.py:6: needs 149.6 GB for Llama-3.1-70B in bf16 at context 8192, "
            "batch 1 (estimate); GPU0 NVIDIA RTX PRO 6000 Blackwell * has 102.6 GB",
            "*_card.py:9: simulated: would run on GPU0*",
        ]
    )
    pytester.makeconftest(catalog_probe("rtx-4090"))  # a real runner with a 24 GB card
    result = pytester.runpytest("-rs", "--gpufit-on-missing=fail")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*needs 79.6 GB for 2 x Qwen3-32B in fp8 at context 8192*"])


def test_relative_model_folder_resolves_against_the_test_file(pytester: pytest.Pytester) -> None:
    folder = pytester.mkdir("sub").joinpath("models", "tiny")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 128,
                "vocab_size": 100,
                "max_position_embeddings": 256,
                "torch_dtype": "bfloat16",
            }
        )
    )
    pytester.path.joinpath("sub", "test_tiny.py").write_text(
        "import pytest\n\n@pytest.mark.requires_fit('models/tiny')\ndef test_t(): pass\n"
    )
    result = pytester.runpytest("-rs", "--gpufit-simulate=t4")
    result.stdout.fnmatch_lines(["*simulated: would run on GPU0 Tesla T4*"])


def test_a_missing_model_is_a_usage_error_even_under_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_fit("no/such/model")
        def test_t(): pass
    """)
    result = pytester.runpytest("--gpufit-simulate=h100-sxm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_t: @requires_fit: model 'no/such/model': no such file*"])
    result.stdout.no_fnmatch_line("*Traceback*")
