"""pytest-xdist: each worker gets its own GPUs before anything touches CUDA."""

from __future__ import annotations

import json

import pytest

from pytest_gpufit.hardware.catalog import simulated_gpus
from pytest_gpufit.xdist_pinning import auto_workers, plan

# pytest-xdist (the dev extra): only the tests that start workers ask for it.


def test_plan_groups_and_outer_visible_devices() -> None:
    gpus = simulated_gpus("5*h100-sxm")
    assert plan(gpus, 2, 3, None) == [((0, 1), "0,1"), ((2, 3), "2,3"), ((4,), "4")]
    assert plan(gpus, 2, 4, "GPU-a,GPU-b,GPU-c,GPU-d,GPU-e")[3] == ((0, 1), "GPU-a,GPU-b")
    assert plan((), 1, 2, None) == []
    assert auto_workers(4, 2) == 2 and auto_workers(5, 2) == 3 and auto_workers(0, 1) is None


CONFTEST = """
import os, pathlib
SEEN_AT_IMPORT = os.environ.get("CUDA_VISIBLE_DEVICES")

def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    pathlib.Path(f"env-{worker}.txt").write_text(str(SEEN_AT_IMPORT))
"""
TESTS = """
import json, os, pathlib, pytest

@pytest.mark.parametrize("i", range(4))
def test_sees(i, gpu_inventory):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    pathlib.Path(f"inv-{worker}.json").write_text(json.dumps(
        [g.index for g in gpu_inventory.gpus]))

@pytest.mark.requires_gpu(count=4)
def test_needs_four():
    pass
"""


@pytest.fixture
def pinned(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytest.importorskip("xdist")
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_p=TESTS)
    return pytester


def test_each_worker_sees_its_own_gpus_before_any_test(pinned: pytest.Pytester) -> None:
    """Also: the JSON report the controller writes merges every worker's verdicts."""
    report = pinned.path / "r.json"
    result = pinned.runpytest_subprocess(
        "-n",
        "2",
        "-rs",
        "--gpufit-simulate=4*h100-sxm",
        "--gpufit-gpus-per-worker=2",
        "-p",
        "no:randomly",
        f"--gpufit-report={report}",
    )
    result.assert_outcomes(passed=4, skipped=1)
    assert (pinned.path / "env-gw0.txt").read_text() == "0,1"
    assert (pinned.path / "env-gw1.txt").read_text() == "2,3"
    for worker in ("gw0", "gw1"):
        path = pinned.path / f"inv-{worker}.json"
        if path.exists():
            assert json.loads(path.read_text()) == [0, 1]
    result.stdout.fnmatch_lines(
        [
            "*needs 4 GPUs; found 2 (GPU0 *, GPU1 *); xdist worker gw* holds 2 GPU(s): "
            "CUDA_VISIBLE_DEVICES=* (--gpufit-gpus-per-worker)*",
            "gpufit: xdist workers pinned: gw0 -> GPU0,GPU1; gw1 -> GPU2,GPU3",
        ]
    )
    verdicts = json.loads(report.read_text())["verdicts"]
    assert list(verdicts) == ["test_p.py::test_needs_four"]
    assert "needs 4 GPUs" in verdicts["test_p.py::test_needs_four"]["reason"]


def test_outer_cuda_visible_devices_is_respected_and_auto_counts_groups(
    pinned: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    result = pinned.runpytest_subprocess(
        "-n",
        "auto",
        "--gpufit-simulate=4*h100-sxm",
        "--gpufit-gpus-per-worker=2",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines(["*2 workers*"])
    assert (pinned.path / "env-gw0.txt").read_text() == "4,5"
    assert (pinned.path / "env-gw1.txt").read_text() == "6,7"


def test_no_gpus_means_no_pinning(pinned: pytest.Pytester) -> None:
    pinned.makeconftest(
        CONFTEST
        + """
from pytest_gpufit.hardware.records import Inventory
def pytest_gpufit_probe(config):
    return Inventory(reason="no driver")
"""
    )
    result = pinned.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=4, skipped=1)
    assert (pinned.path / "env-gw0.txt").read_text() == "None"
    result.stdout.no_fnmatch_line("*xdist workers pinned*")


def test_bad_gpus_per_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--gpufit-gpus-per-worker=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpufit-gpus-per-worker: expected a whole number >= 1*"])


FOUR_CARDS = (
    "[FakeCard(uuid='GPU-0000-a'), FakeCard(uuid='GPU-1111-b'), "
    "FakeCard(uuid='GPU-2222-c', name='NVIDIA H100 PCIe'), "
    "FakeCard(uuid='GPU-3333-d', name='NVIDIA H100 NVL')]"
)
SEES = """
import json, os, pathlib

def test_one(gpu):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    pathlib.Path(f"gpu-{worker}-one.json").write_text(json.dumps([gpu.index, gpu.uuid]))

def test_two(gpu):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    pathlib.Path(f"gpu-{worker}-two.json").write_text(json.dumps([gpu.index, gpu.uuid]))
"""


def test_devices_are_chosen_once_by_the_controller(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xdist")
    from fake_probe import nvml_probe

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("GPUFIT_DEVICES", raising=False)
    pytester.makeconftest(nvml_probe(FOUR_CARDS))
    pytester.makepyfile(test_sees=SEES)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--gpufit-devices=2,3", "-p", "no:randomly", "--dist=loadfile"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["gpufit: xdist workers pinned: gw0 -> GPU2; gw1 -> GPU3"])
    seen = {tuple(json.loads(p.read_text())) for p in pytester.path.glob("gpu-gw*-*.json")}
    # Each worker sees its one GPU as its GPU0: the one the controller planned for it.
    assert seen <= {(0, "GPU-2222-c"), (0, "GPU-3333-d")} and seen


def test_workers_sharing_one_gpu_are_told_loudly(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile("import pytest\n@pytest.mark.requires_gpu\ndef test_x(): pass")
    result = pytester.runpytest_subprocess("-n", "2", "--gpufit-simulate=h100-sxm")
    result.stdout.fnmatch_lines(
        [
            "gpufit: WARNING: xdist workers gw0, gw1 share GPU0: they compete for its memory*",
            "gpufit: xdist workers pinned: gw0 -> GPU0; gw1 -> GPU0",
            "gpufit: WARNING: xdist workers gw0, gw1 share GPU0*",
        ]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpufit-gpus-per-worker=0"], "--gpufit-gpus-per-worker: expected a whole number >= 1*"),
        (
            ["--gpufit-simulate=t4", "--gpufit-devices=5"],
            "--gpufit-devices: no GPU5 in the simulated*",
        ),
        (["--gpufit-simulate=h300"], "--gpufit-simulate: unknown GPU id 'h300'*"),
    ],
)
def test_bad_settings_under_n_auto_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-n", "auto", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
