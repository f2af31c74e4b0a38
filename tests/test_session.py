"""The session object: the device that was judged is the device that runs (issue 10 #3)."""

from __future__ import annotations

import json

import pytest
from fake_probe import nvml_probe

from pytest_gpufit.hardware.catalog import simulated_gpus

# A backend that loads nothing and writes down the device it was handed.
RECORDING_BACKEND = """
import json, pathlib, types
import pytest_gpufit.suites.runtime as runtime

class OutOfMemory(Exception):
    pass

def load(model, weights, dtype, device, trust_remote_code, seed):
    with open("devices.jsonl", "a") as handle:
        handle.write(json.dumps(device) + "\\n")
    return types.SimpleNamespace(
        device=device, dtype=dtype, load_seconds=0.0, peak_allocated_bytes=None,
        wrong_dtype_parameters=(), unload=lambda: None,
    )

_original = runtime.load_backend
runtime.load_backend = lambda name: types.SimpleNamespace(load=load, OutOfMemory=OutOfMemory)

def pytest_unconfigure(config):
    runtime.load_backend = _original
"""

SUITE = """
suite: big
requires: {{vram: 70GB}}
targets:
  - name: m
    model: qwen3-0.6b
    weights: random
    device: {device}
    checks:
      loads: {{}}
"""


def test_a_suite_runs_on_the_gpu_its_verdict_chose(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(nvml_probe("[FakeCard(**RTX_4090), FakeCard()]") + RECORDING_BACKEND)
    pytester.makefile(".gpufit.yaml", big=SUITE.format(device="cuda"))
    report = pytester.path / "r.json"
    result = pytester.runpytest(f"--gpufit-report={report}", "--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1)
    devices = [json.loads(line) for line in (pytester.path / "devices.jsonl").read_text().split()]
    assert devices == ["cuda:1"], "GPU1 (the H100) was judged; GPU0 is a 24 GB RTX 4090"
    data = json.loads(report.read_text())
    (verdict,) = data["verdicts"].values()
    assert verdict["devices"] == [1]
    (measurement,) = data["measurements"].values()
    assert measurement["gpu"] == "NVIDIA H100 80GB HBM3"  # the baseline key: the same GPU


def test_an_explicit_device_that_does_not_meet_the_requirement_does_not_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        nvml_probe("[FakeCard(**RTX_4090), FakeCard(), FakeCard(uuid='GPU-3333')]")
        + RECORDING_BACKEND
    )
    pytester.makefile(".gpufit.yaml", big=SUITE.format(device="cuda:0"))
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*target device cuda:0: GPU0 does not meet the requirement*"])
    assert not (pytester.path / "devices.jsonl").exists()


def test_cuda_visible_devices_for_a_verdict() -> None:
    from pytest_gpufit.hardware.probe import visible_devices

    gpus = simulated_gpus("4*t4")
    assert visible_devices(gpus, (2, 3), None) == "2,3"
    assert visible_devices(gpus, (1,), "GPU-a,GPU-b") == "GPU-b"
    from dataclasses import replace

    with_uuid = tuple(replace(g, uuid=f"GPU-{g.index}") for g in gpus)
    assert visible_devices(with_uuid, (0, 2), None) == "GPU-0,GPU-2"


def test_session_gives_cuda_visible_devices_of_the_judged_gpus(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(nvml_probe("[FakeCard(**RTX_4090), FakeCard(uuid='GPU-h100')]"))
    pytester.makepyfile("""
        import pytest
        from pytest_gpufit.session import state_of

        @pytest.mark.requires_vram(70)
        def test_x(request):
            session = state_of(request.config)
            verdict = session.verdict_of(request.node)
            assert session.cuda_visible_devices(verdict) == "GPU-h100"
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_items_and_the_session_do_not_import_the_plugin() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pytest_gpufit.session, pytest_gpufit.suites.items; "
        "print('pytest_gpufit.plugin' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("simulated", [True, False])
def test_a_gpu_index_that_does_not_exist_is_one_usage_error(
    pytester: pytest.Pytester, simulated: bool
) -> None:
    pytester.makepyfile("""
        from pytest_gpufit import requires_vram

        @requires_vram(1)
        def test_x(): pass
    """)
    if simulated:
        result = pytester.runpytest("--gpufit-devices=0,1", "--gpufit-simulate=rtx-4090")
        where = "in the simulated setup"
    else:
        pytester.makeconftest(nvml_probe("[FakeCard(**RTX_4090)]"))
        result = pytester.runpytest("--gpufit-devices=0,1")
        where = "on this machine"
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --gpufit-devices: no GPU1 {where} (it has GPU0)"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
