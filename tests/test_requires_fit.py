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
            "batch 1 (estimate); GPU0 NVIDIA RTX PRO 6000 Blackwell * "
            "has 101.6 GB usable of 102.6 GB",
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


# ---- several cards and an engine (issue 12, item 6) -------------------------------------------

TP_TESTS = """
    from pytest_gpufit import requires_fit

    @requires_fit("llama-3.1-70b", gpus=2)
    def test_split(): pass

    @requires_fit("llama-3.1-70b")
    def test_one_card(): pass

    @requires_fit("llama-3.1-70b", gpus=2, engine="vllm", context=8192)
    def test_vllm_split(): pass
"""


def test_tensor_parallel_fit_simulated(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TP_TESTS)
    result = pytester.runpytest("-rs", "--gpufit-simulate=2*rtx-pro-6000")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(
        [
            "*:3: simulated: would run on GPU0 NVIDIA RTX PRO 6000*, GPU1 NVIDIA RTX PRO 6000*",
            "*:6: needs 149.6 GB for Llama-3.1-70B in bf16 at context 8192*",
            "*:9: simulated: would run on GPU0*, GPU1*",
        ]
    )


def test_tensor_parallel_fit_gates_on_real_cards(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TP_TESTS)
    pytester.makeconftest(catalog_probe("2*rtx-pro-6000-blackwell"))
    result = pytester.runpytest("-rs", "--gpufit-on-missing=fail")
    result.assert_outcomes(passed=2, failed=1)  # one card alone cannot hold the bf16 70B
    pytester.makeconftest(catalog_probe("rtx-pro-6000-blackwell"))
    result = pytester.runpytest("-rs", "--gpufit-on-missing=fail")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*needs 2 GPUs; found 1 (GPU0 NVIDIA RTX PRO 6000*"])
    pytester.makeconftest(catalog_probe("2*rtx-4090"))
    result = pytester.runpytest("-rs", "--gpufit-on-missing=fail")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*needs 2 GPUs that meet every requirement, 0 do: needs 78.6 GB per GPU for "
            "Llama-3.1-70B in bf16 at context 8192, batch 1, tensor parallel over 2 GPUs "
            "(estimate); GPU0 NVIDIA GeForce RTX 4090 has 25.5 GB usable of 25.8 GB, GPU1 *",
        ]
    )


def test_engine_plan_says_the_70b_does_not_start_on_one_h200(pytester: pytest.Pytester) -> None:
    """Raw bytes fit at a short context (141 GB of weights, 149.2 GB usable of the 150.8 GB
    card); vLLM's 0.9 budget does not hold the weights."""
    pytester.makepyfile("""
        from pytest_gpufit import requires_fit

        @requires_fit("llama-3.1-70b", context=1024)
        def test_bytes(): pass

        @requires_fit("llama-3.1-70b", context=1024, engine="vllm")
        def test_vllm(): pass
    """)
    pytester.makeconftest(catalog_probe("h200"))
    result = pytester.runpytest("-rs", "--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*needs Llama-3.1-70B in bf16 to start on vllm (weights need*"])
    # The reason said "...; plan)"; it names the context the plan used and how to change it.
    result.stdout.fnmatch_lines(
        ["*planned at 1,024 tokens per request, set by requires_fit(context=*"]
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            '"llama-3.1-8b", gpus=3',
            "requires_fit: gpus: 3 GPUs do not divide the 32",
        ),
        (
            '"qwen3-0.6b", context=65536',
            "requires_fit: context 65,536 is beyond Qwen3-0.6B's maximum",
        ),
        ('"qwen3-0.6b", engine="tgi"', "requires_fit engine: unknown engine 'tgi'"),
        ('"qwen3-0.6b", engine="vllm", instances=2', "instances > 1 with engine= is not modelled"),
        ('"qwen3-0.6b", gpus=0', "requires_fit gpus: expected a whole number >= 1, got 0"),
        ('"qwen3-0.6b", gpus=65', "requires_fit gpus: expected at most 64, got 65"),
    ],
)
def test_bad_tensor_parallel_arguments_are_collection_errors(
    pytester: pytest.Pytester, call: str, message: str
) -> None:
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.requires_fit({call})
        def test_x(): pass
    """)
    result = pytester.runpytest("--gpufit-simulate=8*h100")
    shown = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert message in shown, shown
    assert "INTERNALERROR" not in shown and "Traceback" not in shown


def test_yaml_requires_fit_over_two_cards(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(catalog_probe("2*rtx-pro-6000-blackwell"))
    suite = """
suite: tp
requires:
  fit: {model: llama-3.1-70b, gpus: 2, engine: vllm, context: 8192}
targets:
  - name: m
    model: qwen3-0.6b
    weights: random
    checks: {fits: {}}
"""
    pytester.path.joinpath("tp.gpufit.yaml").write_text(suite)
    result = pytester.runpytest("-rs", "--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1)
    pytester.makeconftest(catalog_probe("rtx-pro-6000-blackwell"))
    result = pytester.runpytest("-rs", "--gpufit-on-missing=fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*needs 2 GPUs; found 1*"])
    pytester.path.joinpath("tp.gpufit.yaml").write_text(suite.replace("gpus: 2", "gpu: 2"))
    result = pytester.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        ["*tp.gpufit.yaml:4: requires.fit: requires_fit: unknown argument 'gpu'*"]
    )
    pytester.path.joinpath("tp.gpufit.yaml").write_text(suite.replace("gpus: 2", "gpus: 3"))
    result = pytester.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        ["*tp.gpufit.yaml:4: requires.fit: requires_fit: gpus: 3 GPUs do not divide*"]
    )
