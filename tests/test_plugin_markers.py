"""Markers as users meet them: real pytest sessions through pytester, on simulated cards."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_probe import catalog_probe

from pytest_gpufit.hardware.probe import build_inventory
from pytest_gpufit.markers import requirement_from_marker
from pytest_gpufit.requirements import evaluate

CARDS = ["t4", "a100-80gb", "rtx-4090", "h100-sxm", "rtx-pro-6000-blackwell", "2*h100-sxm"]

# marker source -> the cards (of CARDS) that meet it
MATRIX = {
    "requires_vram(24)": {
        "a100-80gb",
        "rtx-4090",
        "h100-sxm",
        "rtx-pro-6000-blackwell",
        "2*h100-sxm",
    },
    "requires_vram(80)": {"a100-80gb", "h100-sxm", "rtx-pro-6000-blackwell", "2*h100-sxm"},
    "requires_vram('90GiB')": {"rtx-pro-6000-blackwell"},
    "requires_vram(60, free=True)": {
        "a100-80gb",
        "h100-sxm",
        "rtx-pro-6000-blackwell",
        "2*h100-sxm",
    },
    "requires_compute_capability('8.9')": {
        "rtx-4090",
        "h100-sxm",
        "rtx-pro-6000-blackwell",
        "2*h100-sxm",
    },
    "requires_dtype('bf16')": {
        "a100-80gb",
        "rtx-4090",
        "h100-sxm",
        "rtx-pro-6000-blackwell",
        "2*h100-sxm",
    },
    "requires_dtype('fp8')": {"rtx-4090", "h100-sxm", "rtx-pro-6000-blackwell", "2*h100-sxm"},
    "requires_dtype('fp4')": {"rtx-pro-6000-blackwell"},
    "requires_dtype('bf16', 'fp8')": {
        "rtx-4090",
        "h100-sxm",
        "rtx-pro-6000-blackwell",
        "2*h100-sxm",
    },
    "requires_gpu(count=2)": {"2*h100-sxm"},
    "requires_gpu(name='H100')": {"h100-sxm", "2*h100-sxm"},
    "requires_torch('>=2.0')": set(CARDS),
    "requires_torch('>=99')": set(),
    "requires_driver('>=550')": set(CARDS),  # simulated cards carry no driver to judge
}


def _write_test(pytester: pytest.Pytester, marker: str) -> None:
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.{marker}
        def test_gated():
            pass

        def test_plain():
            pass
    """)


def _mark(source: str) -> pytest.Mark:
    mark: pytest.Mark = eval(f"pytest.mark.{source}", {"pytest": pytest}).mark
    return mark


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("marker", sorted(MATRIX))
def test_marker_on_simulated_card(marker: str, card: str) -> None:
    """The decision: the marker's requirement judged on the cards the session simulates."""
    mark = _mark(marker)
    verdict = evaluate(
        requirement_from_marker(mark.name, mark.args, mark.kwargs), build_inventory(card)
    )
    assert verdict.simulated
    assert verdict.ok is (card in MATRIX[marker]), verdict.reason
    if verdict.ok:
        assert verdict.reason.startswith("GPU0 ")
    else:
        assert verdict.reason.startswith("needs ")


@pytest.mark.parametrize("card", CARDS)
def test_every_marker_on_a_simulated_card_end_to_end(pytester: pytest.Pytester, card: str) -> None:
    """The same table through a real session per card: a gated test per marker, skipped as
    `simulated: would run on GPU0` where the card meets it, with the reason where not."""
    markers = sorted(MATRIX)
    tests = "".join(
        f"@pytest.mark.{marker}\ndef test_gated_{i}():\n    pass\n\n"
        for i, marker in enumerate(markers)
    )
    pytester.makepyfile(f"import pytest\n\n{tests}def test_plain():\n    pass\n")
    recorder = pytester.inline_run(f"--gpufit-simulate={card}")
    recorder.assertoutcome(passed=1, skipped=len(markers))
    reasons = {}
    for report in recorder.getreports("pytest_runtest_logreport"):
        if report.skipped:
            assert isinstance(report.longrepr, tuple)
            reasons[report.nodeid.rsplit("_", 1)[1]] = report.longrepr[2]
    assert len(reasons) == len(markers)
    for i, marker in enumerate(markers):
        reason = reasons[str(i)]
        if card in MATRIX[marker]:
            assert reason.startswith("Skipped: simulated: would run on GPU0"), (marker, reason)
        else:
            assert reason.startswith("Skipped: needs "), (marker, reason)
            assert "simulated: would run" not in reason, (marker, reason)


@pytest.mark.parametrize("card", ["t4", "rtx-4090"])
def test_fail_policy_turns_unmet_into_a_failure_with_the_reason(
    pytester: pytest.Pytester, card: str
) -> None:
    _write_test(pytester, "requires_vram(60)")
    pytester.makeconftest(catalog_probe(card))  # a real runner with this card, not a plan
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*needs 60 GB of GPU memory; GPU0 * has *GB*"])
    result.stdout.no_fnmatch_line("*Traceback*")
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_fail_policy_met_requirement_runs_on_the_card(pytester: pytest.Pytester) -> None:
    _write_test(pytester, "requires_vram(60)")
    pytester.makeconftest(catalog_probe("h100-sxm"))
    result = pytester.runpytest("--gpufit-on-missing=fail", "-rs")
    result.assert_outcomes(passed=2)


def test_fail_policy_with_simulation_is_a_usage_error(pytester: pytest.Pytester) -> None:
    _write_test(pytester, "requires_vram(60)")
    result = pytester.runpytest("--gpufit-on-missing=fail", "--gpufit-simulate=h100-sxm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpufit-on-missing*--gpufit-simulate*"])


def test_exact_reason_text(pytester: pytest.Pytester) -> None:
    _write_test(pytester, "requires_vram(60)")
    result = pytester.runpytest("-rs", "--gpufit-simulate=rtx-4090")
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_exact_reason_text.py:3: needs 60 GB of GPU memory; "
            "GPU0 NVIDIA GeForce RTX 4090 has 25.8 GB"
        ]
    )


def test_several_markers_must_hold_on_the_same_devices(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        from pytest_gpufit import requires_gpu, requires_vram, requires_dtype

        @requires_gpu(count=2)
        @requires_vram(80)
        def test_two_big():
            pass

        @requires_dtype("fp8")
        @requires_vram(30)
        def test_fp8_big():
            pass
    """)
    # One 4090 (fp8, 25.8 GB) and one A100 (no fp8, 85.9 GB): no single card meets both.
    result = pytester.runpytest("-rs", "--gpufit-simulate=rtx-4090,a100-80gb")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*needs 2 GPUs that meet every requirement, 1 do: needs 80 GB of GPU memory; "
            "GPU0 NVIDIA GeForce RTX 4090 has 25.8 GB*",
            "*needs 30 GB of GPU memory; GPU0 NVIDIA GeForce RTX 4090 has 25.8 GB; "
            "needs native fp8 support; GPU1 NVIDIA A100-SXM4-80GB has CC 8.0*",
        ]
    )
    result = pytester.runpytest("-rs", "--gpufit-simulate=2*a100-80gb,rtx-pro-6000-blackwell")
    result.stdout.fnmatch_lines(
        [
            "*simulated: would run on GPU0 NVIDIA A100-SXM4-80GB, GPU1 NVIDIA A100-SXM4-80GB*",
            "*simulated: would run on GPU2 NVIDIA RTX PRO 6000*",
        ]
    )


def test_no_gpu_case_skips_with_the_probe_reason(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        from pytest_gpufit.hardware.records import Inventory
        def pytest_gpufit_probe(config):
            return Inventory(reason="NVIDIA driver not loaded")
    """)
    _write_test(pytester, "requires_vram(1)")
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["gpufit: no GPU: NVIDIA driver not loaded", "*SKIPPED*no GPU: NVIDIA driver not loaded*"]
    )
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1, failed=1)


def test_real_probe_without_gpu_skips(pytester: pytest.Pytester) -> None:
    # The real probe in a fresh process, on a machine whose NVML library is absent, whatever
    # this machine has: a pynvml that fails as it does without a driver shadows the installed
    # one (pytester puts its folder first on the subprocess's PYTHONPATH).
    pytester.makepyfile(
        pynvml="""
        class NVMLError(Exception):
            pass

        class NVMLError_LibraryNotFound(NVMLError):
            pass

        def nvmlInit():
            raise NVMLError_LibraryNotFound("libnvidia-ml.so.1: cannot open shared object file")
        """
    )
    _write_test(pytester, "requires_gpu")
    result = pytester.runpytest_subprocess("-rs", "test_real_probe_without_gpu_skips.py")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "gpufit: no GPU: NVML shared library not found (is the NVIDIA driver installed?)",
            "*SKIPPED*NVML shared library not found*",
        ]
    )


def test_simulation_summary_counts_per_card(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(30)
        def test_a(): pass

        @pytest.mark.requires_dtype("fp4")
        def test_b(): pass

        @pytest.mark.requires_dtype("fp4")
        def test_c(): pass
    """)
    result = pytester.runpytest("--gpufit-simulate=rtx-4090,h100-sxm")
    result.stdout.fnmatch_lines(
        [
            "gpufit: 1 of 3 gated tests would run (simulated)",
            "  GPU0 rtx-4090: 0 gated tests would run here",
            "  GPU1 h100-sxm: 1 gated test would run here",
            "  not run (2): needs native fp4 support; *",
        ]
    )


def test_gpu_fixture_skips_under_simulation_and_without_gpu(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_uses_gpu(gpu):
            assert gpu.memory_total_bytes > 0

        def test_inventory(gpu_inventory, gpu_environment):
            assert gpu_inventory.environment is gpu_environment
            assert len(gpu_inventory.gpus) == 2
    """)
    result = pytester.runpytest("-rs", "--gpufit-simulate=2*t4")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*simulated: would run on GPU0 Tesla T4*"])


def test_gpu_fixture_gives_the_device_that_meets_the_requirement(pytester: pytest.Pytester) -> None:
    tests_dir = str(Path(__file__).parent)
    pytester.makeconftest(f"""
        import sys
        sys.path.insert(0, {tests_dir!r})
        from fake_nvml import FakeNvml, FakeCard, RTX_4090
        from pytest_gpufit.hardware.nvml import probe_nvml
        def pytest_gpufit_probe(config):
            return probe_nvml(FakeNvml([FakeCard(**RTX_4090), FakeCard()]), use_environ=False)
    """)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(80)
        def test_big(gpu):
            assert gpu.index == 1 and "H100" in gpu.name

        def test_default(gpu):
            assert gpu.index == 0
    """)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "gpufit: GPU0 NVIDIA GeForce RTX 4090, 25.8 GB (24.0 GiB), "
            "CC 8.9, driver 550.54.15, CUDA 12.4",
            "gpufit: GPU1 NVIDIA H100 80GB HBM3, 85.5 GB (79.6 GiB), *",
        ]
    )


def test_devices_option_restricts_gpus(pytester: pytest.Pytester) -> None:
    _write_test(pytester, "requires_dtype('fp8')")
    result = pytester.runpytest("-rs", "--gpufit-simulate=h100-sxm,t4", "--gpufit-devices=1")
    result.stdout.fnmatch_lines(["*needs native fp8 support; GPU1 Tesla T4*"])
    result = pytester.runpytest("--gpufit-simulate=t4", "--gpufit-devices=3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpufit-devices: no GPU3 in the simulated setup (it has GPU0)"])


@pytest.mark.parametrize(("cards", "outcome"), [("rtx-4090", "failed"), ("h100-sxm", "passed")])
def test_marks_added_after_collection_still_gate(
    pytester: pytest.Pytester, cards: str, outcome: str
) -> None:
    """A trylast conftest hook or a fixture that adds a gpufit mark must not run it ungated."""
    pytester.makeconftest(
        catalog_probe(cards)
        + """
import pytest

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if "late" in item.name:
            item.add_marker(pytest.mark.requires_vram(80))

@pytest.fixture
def big(request):
    request.node.add_marker(pytest.mark.requires_vram(80))
"""
    )
    pytester.makepyfile("""
        def test_late():
            pass

        def test_from_fixture(big):
            pass
    """)
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(**{outcome: 2})
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*needs 80 GB of GPU memory*"])
