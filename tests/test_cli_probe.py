"""``gpufit probe`` through the console script."""

from __future__ import annotations

import fnmatch
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("probe", "--simulate", ""), "gpufit: error: --simulate is set but empty; unset it*"),
        (("table", "--dtypes", ""), "gpufit: error: --dtypes: no dtype given in ''*"),
        (("table", "--dtypes", " , "), "gpufit: error: --dtypes: no dtype given in ' , '*"),
    ],
)
def test_set_but_empty_is_an_error(args: tuple[str, ...], message: str) -> None:
    out = run(*args)
    assert out.returncode == 2, out.stdout
    assert fnmatch.fnmatch(out.stderr.strip(), message), out.stderr
    assert "Traceback" not in out.stderr


def test_probe_into_a_closed_pipe_exits_quietly() -> None:
    # `gpufit probe | head -1`: the reader stops early; no BrokenPipeError traceback.
    shell = f"{GPUFIT} probe --json --simulate 256*h100-sxm | head -1"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True)
    assert out.stdout == "{\n", out.stdout
    assert out.stderr == "", out.stderr
    assert out.returncode == 0
