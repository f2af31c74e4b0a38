"""``gpufit probe`` through the console script."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pytest_gpufit.hardware.records import Gpu

GPUFIT = shutil.which("gpufit")
pytestmark = pytest.mark.skipif(GPUFIT is None, reason="console script not installed")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GPUFIT or "gpufit", *args], capture_output=True, text=True)


def test_probe_without_gpu_says_why_and_exits_0() -> None:
    out = run("probe")
    if "no GPU" not in out.stdout:
        pytest.skip("this machine has a GPU")
    assert out.returncode == 0 and out.stdout.startswith("no GPU: ")


def test_probe_json_has_the_gpu_record_fields() -> None:
    out = run("probe", "--json", "--simulate", "2*rtx-pro-6000-blackwell")
    data = json.loads(out.stdout)
    assert len(data["gpus"]) == 2
    assert set(data["gpus"][0]) == set(Gpu.__dataclass_fields__)
    assert data["gpus"][0]["compute_capability"] == "12.0"
    assert data["gpus"][1]["memory_total_bytes"] == 97887 * 2**20


def test_probe_unknown_card_is_a_usage_error() -> None:
    out = run("probe", "--simulate", "h300")
    assert out.returncode == 2 and "--simulate: unknown GPU id 'h300'" in out.stderr
    assert "Traceback" not in out.stderr
