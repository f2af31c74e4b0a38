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


def test_engine_fit_holds_the_batch_it_names(pytester: pytest.Pytester) -> None:
    """``batch`` with ``engine=`` is that many requests of ``context`` tokens at once: the
    engine must start and hold them all (vLLM's "Maximum concurrency" >= batch), not merely
    start. Llama-3.1-8B at 128k on an H100: vLLM holds 3.38 such requests."""
    pytester.makepyfile("""
        from pytest_gpufit import requires_fit

        @requires_fit("llama-3.1-8b", context=131072, batch=64, engine="vllm")
        def test_many(): pass

        @requires_fit("llama-3.1-8b", context=131072, batch=3, engine="vllm")
        def test_three(): pass

        @requires_fit("llama-3.1-8b", context=131072, batch=4, engine="vllm")
        def test_four(): pass

        @requires_fit("llama-3.1-8b", context=131072, batch=64, engine="sglang")
        def test_sglang(): pass

        @requires_fit("llama-3.1-8b", context=131072, batch=64, engine="llama.cpp")
        def test_llama_cpp(): pass

        @requires_fit("llama-3.1-8b", context=131072, batch=64, engine="transformers")
        def test_transformers(): pass

        @requires_fit("llama-3.1-8b", context=16384, batch=8, engine="llama.cpp")
        def test_llama_cpp_slots(): pass
    """)
    pytester.makeconftest(catalog_probe("h100-sxm"))
    result = pytester.runpytest("-rA", "--gpufit-on-missing=fail")
    result.assert_outcomes(passed=2, failed=5)
    result.stdout.fnmatch_lines(
        [
            "*needs Llama-3.1-8B in bf16 on vllm to hold 4 requests of 131,072 tokens at once "
            "(plan); GPU0 NVIDIA H100 80GB HBM3 has KV cache for 3.38 of them*",
            "*PASSED*test_three*",
            "*PASSED*test_llama_cpp_slots*",
        ]
    )


def test_the_suite_fits_check_agrees_with_requires_fit_on_usable_memory(
    pytester: pytest.Pytester,
) -> None:
    """Llama-3.1-70B bf16 at 8k needs 149.6 GB; an H200 has 150.8 GB by NVML but CUDA can
    allocate 149.2 GB. requires_fit says no; the suite's ``fits`` check must say no too."""
    pytester.makeconftest(catalog_probe("h200"))
    pytester.path.joinpath("m.gpufit.yaml").write_text(
        "suite: s\ntargets:\n  - name: m\n    model: llama-3.1-70b\n    weights: random\n"
        "    context: 8192\n    checks: {fits: {}}\n"
    )
    pytester.makepyfile(
        "from pytest_gpufit import requires_fit\n\n"
        "@requires_fit('llama-3.1-70b', context=8192)\ndef test_x(): pass\n"
    )
    result = pytester.runpytest("-rA", "--gpufit-on-missing=fail")
    result.assert_outcomes(failed=2)


def test_llama_cpp_splits_layers_so_any_gpu_count_is_allowed(pytester: pytest.Pytester) -> None:
    """Heads must divide by the TP size for vLLM, not for llama.cpp (``-sm layer``): three
    cards are a valid llama.cpp setup, not a collection error."""
    pytester.makepyfile("""
        from pytest_gpufit import requires_fit

        @requires_fit("llama-3.1-8b", gpus=3, engine="llama.cpp", context=8192)
        def test_three(): pass
    """)
    pytester.makeconftest(catalog_probe("3*h100-sxm"))
    result = pytester.runpytest("-rA", "--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1)
    pytester.makeconftest(catalog_probe("2*h100-sxm"))
    result = pytester.runpytest("-rA", "--gpufit-on-missing=fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*needs 3 GPUs; found 2*"])


def test_a_precision_the_card_has_no_kernel_for_does_not_fit(pytester: pytest.Pytester) -> None:
    """The table says 'unsupported precision' for fp8 on a T4 (CC 7.5: no fp8 kernel, native or
    weight-only); requires_fit, by bytes or by an engine, must not pass it on memory alone."""
    pytester.makepyfile("""
        from pytest_gpufit import requires_fit

        @requires_fit("qwen3-0.6b", dtype="fp8", context=4096)
        def test_raw(): pass

        @requires_fit("qwen3-0.6b", dtype="fp8", context=4096, engine="vllm")
        def test_vllm(): pass

        @requires_fit("qwen3-0.6b", dtype="int4", context=4096)
        def test_weight_only(): pass
    """)
    pytester.makeconftest(catalog_probe("t4"))
    result = pytester.runpytest("-rA", "--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        ["*needs a kernel for Qwen3-0.6B's fp8 weights (native or emulated); GPU0 Tesla T4 "
         "has CC 7.5, native: *"]
    )  # fmt: skip


def test_an_unknown_kernel_set_is_judged_on_memory(pytester: pytest.Pytester) -> None:
    """Only an NVIDIA card of known compute capability is refused a format: an MI300X's int4
    (the catalog lists no int4, ROCm engines run AWQ) and a card whose CC the probe could not
    read are judged on memory as before."""
    pytester.makeconftest("""
import dataclasses
from pytest_gpufit.hardware.catalog import simulated_gpus
from pytest_gpufit.hardware.records import Inventory

def pytest_gpufit_probe(config):
    amd, nv = simulated_gpus("mi300x,h100-sxm")
    nv = dataclasses.replace(nv, compute_capability=None, native_dtypes=())
    gpus = tuple(dataclasses.replace(g, simulated=False) for g in (amd, nv))
    return Inventory(gpus=gpus, source="fake")
""")
    pytester.makepyfile("""
        from pytest_gpufit import requires_fit

        @requires_fit("qwen3-0.6b", dtype="int4", context=4096, gpus=2)
        def test_both(): pass
    """)
    result = pytester.runpytest("-rA", "--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1)


def test_an_engine_verdict_says_the_card_in_the_engines_unit(pytester: pytest.Pytester) -> None:
    """vLLM's words are GiB ("weights need 56.88 GiB per GPU"); the card was then said in GB
    ("has 25.8 GB"): one message, one unit."""
    pytester.makepyfile("""
        from pytest_gpufit import requires_fit

        @requires_fit("qwen3-30b-a3b", context=8192, engine="vllm")
        def test_vllm(): pass
    """)
    pytester.makeconftest(catalog_probe("rtx-4090"))
    result = pytester.runpytest("-rA", "--gpufit-on-missing=fail")
    result.assert_outcomes(failed=1)
    line = next(ln for ln in result.stdout.lines if "weights need" in ln)
    assert "GiB usable of 23.99 GiB" in line
    assert " GB" not in line.replace("GiB", "")
