"""Declarative suites end to end on the CPU, through real pytest sessions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")  # the hf extra: only the tests that run a model
    return save_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny-llama")


def suite_text(model: Path, checks: str, extra: str = "") -> str:
    return f"""
suite: tiny
targets:
  - name: tiny
    model: {model}
    dtype: bf16
    device: cpu{extra}
    checks:
{checks}
"""


ALL_CHECKS = """      fits: {}
      loads: {max_seconds: 120}
      generates: {prompt: "the capital of france is", max_new_tokens: 6}
      throughput: {prompt_tokens: 16, new_tokens: 8, warmup: 1, repeats: 3, min_decode_tok_s: 1}
      precision: {reference: fp32, prompt_tokens: 16, max_kl: 0.05, min_top1_agreement: 0.5}
"""

COUNT_LOADS = """
import pytest_gpufit.backends.transformers_backend as backend

LOADS = []
_original = backend.load

def _counting(*args, **kwargs):
    LOADS.append(args[0])
    return _original(*args, **kwargs)

backend.load = _counting

def pytest_unconfigure(config):
    print(f"LOADS={len(LOADS)}")
    backend.load = _original
"""


def test_checkpoint_suite_passes_every_check_loading_the_model_once(
    pytester: pytest.Pytester, tiny_checkpoint: Path
) -> None:
    pytester.makefile(".gpufit.yaml", tiny=suite_text(tiny_checkpoint, ALL_CHECKS))
    pytester.makeconftest(COUNT_LOADS)
    report = pytester.path / "report.json"
    result = pytester.runpytest("-v", "-s", f"--gpufit-report={report}", "-p", "no:randomly")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            "tiny.gpufit.yaml::tiny::fits PASSED*",
            "tiny.gpufit.yaml::tiny::loads PASSED*",
            "tiny.gpufit.yaml::tiny::generates PASSED*",
            "tiny.gpufit.yaml::tiny::throughput PASSED*",
            "tiny.gpufit.yaml::tiny::precision PASSED*",
            "*LOADS=1*",
        ]
    )
    data = json.loads(report.read_text())["measurements"]
    throughput = data["tiny.gpufit.yaml::tiny::throughput"]["metrics"]
    assert throughput["decode_tok_s"] > 0 and throughput["prefill_tok_s"] > 0
    assert throughput["repeats"] == 3 and "decode_tok_s_spread" in throughput
    assert data["tiny.gpufit.yaml::tiny::generates"]["metrics"]["new_tokens"] == 6
    assert data["tiny.gpufit.yaml::tiny::generates"]["gpu"] == "cpu"
    precision = data["tiny.gpufit.yaml::tiny::precision"]["metrics"]
    assert 0 <= precision["kl"] < 0.05 and precision["top1_agreement"] >= 0.5
    loads = data["tiny.gpufit.yaml::tiny::loads"]["metrics"]
    assert loads["estimate_weights_bytes"] > 0 and loads["load_seconds"] > 0
    # A CPU target counts no CUDA runtime (768 MiB): the tiny model's estimate stays tiny.
    fits = data["tiny.gpufit.yaml::tiny::fits"]["metrics"]
    assert fits["estimate_total_bytes"] < 100 * 2**20
    result.stdout.fnmatch_lines(["*gpufit suite results*", "tiny::tiny*bf16*cpu*"])


def test_generation_is_deterministic_and_expectations_are_checked(
    pytester: pytest.Pytester, tiny_checkpoint: Path
) -> None:
    import torch

    from pytest_gpufit.backends.transformers_backend import load

    # What the model produces, read through the backend itself, then asked for in a suite: it
    # must pass; a different expectation must fail naming both.
    model = load(tiny_checkpoint, "checkpoint", "bf16", "cpu", False)
    ids = torch.tensor([model.encode("the capital of france is")])
    produced = model.generate(ids, 5)[0][0].tolist()
    text = model.decode(produced)
    good = (
        f'      generates: {{prompt: "the capital of france is", max_new_tokens: 5, '
        f'expect_tokens: {produced}, expect_contains: "{text.split()[0]}"}}\n'
    )
    pytester.makefile(".gpufit.yaml", gen=suite_text(tiny_checkpoint, good))
    pytester.runpytest().assert_outcomes(passed=1)
    wrong = [(t + 1) % 20 for t in produced]
    bad = good.replace(str(produced), str(wrong))
    pytester.makefile(".gpufit.yaml", gen=suite_text(tiny_checkpoint, bad))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    assert f"tiny::generates: tokens {produced} != expected {wrong}" in result.stdout.str()
    absent = good.replace(f'"{text.split()[0]}"', '"zebra"')
    pytester.makefile(".gpufit.yaml", gen=suite_text(tiny_checkpoint, absent))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    assert f"output {text!r} does not contain 'zebra'" in result.stdout.str()


def test_unmet_thresholds_fail_with_the_measured_figure(
    pytester: pytest.Pytester, tiny_checkpoint: Path
) -> None:
    checks = """      throughput: {prompt_tokens: 8, new_tokens: 4, repeats: 2,
                   min_decode_tok_s: 1e9, max_ttft_ms: 1e-6}
      precision: {reference: fp32, prompt_tokens: 8, max_kl: 1e-12}
      loads: {max_seconds: 1e-9}
"""
    pytester.makefile(".gpufit.yaml", slow=suite_text(tiny_checkpoint, checks))
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*tiny::throughput: decode * tok/s < min_decode_tok_s 1e+09 (median of 2, spread *); "
            "time to first token * ms > max_ttft_ms 1e-06*",
            "*tiny::precision: KL divergence * > max_kl 1e-12*",
            "*tiny::loads: load took * s > max_seconds 1e-09*",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_memory_bounds_on_cpu_are_an_error_not_a_silent_pass(
    pytester: pytest.Pytester, tiny_checkpoint: Path
) -> None:
    checks = "      loads: {max_peak_memory: 1GB}\n"
    pytester.makefile(".gpufit.yaml", mem=suite_text(tiny_checkpoint, checks))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*need a CUDA device to measure; this target runs on cpu*"])


def test_random_weights_from_a_config_alone(pytester: pytest.Pytester) -> None:
    pytest.importorskip("transformers")
    config = Path(__file__).parent.parent / "fixtures" / "tiny-llama"
    checks = "      loads: {}\n      generates: {prompt_tokens: 4, max_new_tokens: 3}\n"
    pytester.makefile(".gpufit.yaml", rnd=suite_text(config, checks, "\n    weights: random"))
    pytester.runpytest().assert_outcomes(passed=2)


def test_out_of_memory_is_contained_and_later_items_run(
    pytester: pytest.Pytester, tiny_checkpoint: Path
) -> None:
    pytester.makeconftest("""
        import torch
        import pytest_gpufit.backends.transformers_backend as backend

        _original = backend.load

        def _load(model, weights, dtype, *args, **kwargs):
            if dtype == "fp32":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return _original(model, weights, dtype, *args, **kwargs)

        backend.load = _load

        def pytest_unconfigure(config):
            backend.load = _original
    """)
    pytester.makefile(
        ".gpufit.yaml",
        oom=f"""
suite: oom
targets:
  - name: big
    model: {tiny_checkpoint}
    dtype: fp32
    device: cpu
    checks:
      loads: {{}}
      generates: {{prompt_tokens: 4, max_new_tokens: 2}}
  - name: small
    model: {tiny_checkpoint}
    dtype: bf16
    device: cpu
    checks:
      generates: {{prompt_tokens: 4, max_new_tokens: 2}}
""",
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*big::loads: out of memory on cpu, estimate * GB; the device was cleaned for the next "
            "test (CUDA out of memory. Tried to allocate 20.00 GiB)*"
        ]
    )


def test_cuda_targets_skip_without_gpu_and_fits_runs_under_simulation(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(
        ".gpufit.yaml",
        gpu="""
suite: gpu
targets:
  - name: qwen
    model: qwen3-30b-a3b
    weights: random
    device: cuda
    checks:
      fits: {}
      throughput: {}
""",
    )
    result = pytester.runpytest("-rs", "--gpufit-simulate=rtx-pro-6000-blackwell")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*simulated: would run on GPU0 NVIDIA RTX PRO 6000*"])
    result = pytester.runpytest("-rs", "--gpufit-simulate=rtx-4090")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*qwen::fits: does not fit: needs 64.4 GB (bf16 at context "
            "8192, estimate); GPU0 NVIDIA GeForce RTX 4090 has 25.5 GB usable*"
        ]
    )
    pytester.makeconftest("""
        from pytest_gpufit.hardware.records import Inventory
        def pytest_gpufit_probe(config):
            return Inventory(reason="NVIDIA driver not loaded")
    """)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no GPU: NVIDIA driver not loaded*"])
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(failed=2)


def test_a_gpu_torch_cannot_use_is_one_clear_failure_not_a_traceback(
    pytester: pytest.Pytester,
) -> None:
    # NVML sees a card, but torch cannot use it: the CPU build on a GPU runner, or a CUDA build
    # newer than the driver. Every check that needs the device fails saying which, and how to
    # fix it (was: AttributeError: module 'torch._C' has no attribute '_cuda_...').
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")

    if torch.cuda.is_available():
        pytest.skip("this torch can use a GPU here: the case needs one that cannot")
    from fake_probe import catalog_probe

    pytester.makeconftest(catalog_probe("rtx-4090"))
    config = Path(__file__).parent.parent / "fixtures" / "tiny-llama"
    checks = "      loads: {}\n      generates: {prompt_tokens: 4, max_new_tokens: 3}\n"
    text = suite_text(config, checks, "\n    weights: random").replace(
        "device: cpu", "device: cuda"
    )
    pytester.makefile(".gpufit.yaml", rnd=text)
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "Traceback" not in out and "AttributeError" not in out and "_cuda_" not in out, out
    if torch.version.cuda is None:
        result.stdout.fnmatch_lines(
            [f"tiny::loads: cuda:0: torch {torch.__version__} is a CPU build*CUDA build*"]
        )
    else:
        result.stdout.fnmatch_lines(["tiny::loads: cuda:0: torch *cannot use a GPU here*"])


def test_suite_requires_gates_like_markers(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".gpufit.yaml",
        req="""
suite: req
requires: {vram: 80GB, dtype: [bf16, fp8]}
targets:
  - name: m
    model: qwen3-0.6b
    weights: random
    checks: {fits: {}}
""",
    )
    result = pytester.runpytest("-rs", "--gpufit-simulate=a100-80gb")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*needs native fp8 support; GPU0 NVIDIA A100-SXM4-80GB has CC 8.0*"]
    )


def test_ids_select_with_k(pytester: pytest.Pytester, tiny_checkpoint: Path) -> None:
    checks = "      fits: {}\n      generates: {prompt_tokens: 4, max_new_tokens: 2}\n"
    pytester.makefile(".gpufit.yaml", sel=suite_text(tiny_checkpoint, checks))
    result = pytester.runpytest("-v", "-k", "generates")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["sel.gpufit.yaml::tiny::generates PASSED*"])
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["sel.gpufit.yaml::tiny::fits", "sel.gpufit.yaml::tiny::generates"])


def test_junit_carries_measurements(pytester: pytest.Pytester, tiny_checkpoint: Path) -> None:
    checks = "      throughput: {prompt_tokens: 4, new_tokens: 3, repeats: 1, warmup: 0}\n"
    pytester.makefile(".gpufit.yaml", ju=suite_text(tiny_checkpoint, checks))
    pytester.runpytest("--junitxml=out.xml")
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="decode_tok_s"' in xml and 'name="ttft_ms"' in xml


def test_a_missing_extra_is_a_skip_naming_it(pytester: pytest.Pytester) -> None:
    pytest.importorskip("torch", reason="the message names transformers when torch is there")
    pytester.makeconftest("""
        import sys
        sys.modules["transformers"] = None  # as if the hf extra were not installed
    """)
    config = Path(__file__).parent.parent / "fixtures" / "tiny-llama"
    checks = "      fits: {}\n      loads: {}\n"
    pytester.makefile(".gpufit.yaml", nx=suite_text(config, checks, "\n    weights: random"))
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*the transformers backend needs torch and transformers (transformers is missing: "
            "ModuleNotFoundError: import of transformers halted; None in sys.modules); "
            "install it: pip install 'pytest-gpufit[[]hf[]]'*"
        ]
    )


def test_precision_reference_that_does_not_fit_is_a_clear_failure(
    pytester: pytest.Pytester, tiny_checkpoint: Path
) -> None:
    pytester.makeconftest("""
        import pytest_gpufit.backends.transformers_backend as backend

        _original = backend.TransformersModel.free_bytes
        backend.TransformersModel.free_bytes = lambda self: 1000  # a nearly full device

        def pytest_unconfigure(config):
            backend.TransformersModel.free_bytes = _original
    """)
    checks = "      precision: {reference: fp32, prompt_tokens: 8}\n"
    pytester.makefile(".gpufit.yaml", full=suite_text(tiny_checkpoint, checks))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*tiny::precision: the fp32 reference needs * on cpu beside the "
            "bf16 model, and only 0.0 GB is free*"
        ]
    )


def test_loading_leaves_the_hub_environment_alone_and_stays_offline(
    pytester: pytest.Pytester, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Offline without the variable: every from_pretrained passes local_files_only, so no
    # connection is even tried (a try here would be recorded and refused).
    pytester.makeconftest("""
        import socket

        TRIED = []
        _connect = socket.socket.connect

        def _refuse(self, address):
            TRIED.append(address)
            raise OSError("no network in this test")

        socket.socket.connect = _refuse

        def pytest_unconfigure(config):
            socket.socket.connect = _connect
            print(f"TRIED={TRIED}")
    """)
    checks = '      loads: {}\n      generates: {prompt: "the capital of", max_new_tokens: 2}\n'
    pytester.makefile(".gpufit.yaml", hub=suite_text(tiny_checkpoint, checks))
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["TRIED=[[][]]"])
    assert "HF_HUB_OFFLINE" not in os.environ
