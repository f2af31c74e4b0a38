"""The project's tests see none of the caller's GPUFIT_*, CI or CUDA variables (issue 10 #14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import leaky_names

TESTS = Path(__file__).parent

INNER = '''
import os

import pytest

pytest_plugins = ["pytester"]


def test_environment_is_clean():
    leaked = [n for n in os.environ if n.startswith("GPUFIT_")]
    leaked += [n for n in ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "CI", "CUDA_VISIBLE_DEVICES")
               if n in os.environ]
    assert leaked == []


@pytest.mark.parametrize("run", ["runpytest_inprocess", "runpytest_subprocess"])
def test_a_pytester_run_skips_an_unmet_marker(pytester, run):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(80)
        def test_gated():
            pass
    """)
    result = getattr(pytester, run)("-p", "no:cacheprovider", "--gpufit-simulate=t4")
    result.assert_outcomes(skipped=1)
'''


def test_leaky_names() -> None:
    environ = {"GPUFIT_ON_MISSING": "fail", "GPUFIT_X": "", "CI": "1", "HOME": "/root"}
    environ |= {"GITHUB_STEP_SUMMARY": "s", "GITHUB_ACTIONS": "true", "CUDA_VISIBLE_DEVICES": "0"}
    assert leaky_names(environ) == [
        "CI",
        "CUDA_VISIBLE_DEVICES",
        "GITHUB_ACTIONS",
        "GITHUB_STEP_SUMMARY",
        "GPUFIT_ON_MISSING",
        "GPUFIT_X",
    ]


def test_tests_run_clean_under_a_gate_runners_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A copy of this project's conftest guards a session started from a GPU runner's shell:
    # what the tests see, in the process and in pytester's in-process and subprocess runs.
    step = pytester.path / "step-summary.md"
    monkeypatch.setenv("GPUFIT_ON_MISSING", "fail")
    monkeypatch.setenv("GPUFIT_DEVICES", "3")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    # The session itself may write its own summary (it was started with the variable); the
    # nested runs of the tests must not add theirs.
    written = step.read_text() if step.exists() else ""
    assert written.count("## pytest-gpufit") <= 1, written
