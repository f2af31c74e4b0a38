"""gpufit ab attacked (issue 20): a wrong verdict or a green where the A/B must fail.

Real uv venvs (tests/ab_envs.py) and the console script, as a user meets them: A equal to B
in disguise, a side with another pytest-gpufit, a test that fails or skips on B only, too few
rounds under ``--inconclusive ok``, a tolerance that leaves no verdict, an unwritable output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from ab_envs import TARGET, build_wheel, make_venv

GPUFIT = str(Path(sys.executable).with_name("gpufit"))

# Side B's slowpkg 3.0 is as fast as 1.0, but its output differs (a test fails) or it skips.
EXTRA = """
import pytest
import slowpkg


def test_output():
    assert slowpkg.__version__ != "3.0", "B's output differs"


def test_gated():
    if slowpkg.__version__ == "3.0":
        pytest.skip("B skips its checks")
"""


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ab-attack")
    wheels = root / "wheels"
    build_wheel(wheels, "1.0", 1.0)
    build_wheel(wheels, "3.0", 1.0)
    other = make_venv(root / "other-gpufit", wheels, "1.0")
    # Another pytest-gpufit version installed in that venv, first on its sys.path.
    site = subprocess.run(
        [str(other), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    info = Path(site) / "pytest_gpufit-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pytest-gpufit\nVersion: 9.9.9\n")
    (root / "v1-link").symlink_to(root / "v1")
    envs = {
        "v1": make_venv(root / "v1", wheels, "1.0"),
        "v1-copy": make_venv(root / "v1-copy", wheels, "1.0"),
        "v3": make_venv(root / "v3", wheels, "3.0"),
        "other-gpufit": other,
    }
    envs["v1-python3"] = root / "v1" / "bin" / "python3"
    envs["v1-link"] = root / "v1-link" / "bin" / "python"
    assert sysconfig.get_paths()["purelib"]  # the venvs reach pytest-gpufit through it
    return envs


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "test_speed.py").write_text(TARGET)
    (tmp_path / "test_extra.py").write_text(EXTRA)
    return tmp_path


def gpufit_ab(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFIT_")}
    return subprocess.run(
        [GPUFIT, "ab", *args], cwd=project, capture_output=True, text=True, timeout=240, env=env
    )


def one_error(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("gpufit: error: "), done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "round 1" not in done.stderr  # refused before any run


@pytest.mark.parametrize("disguise", ["v1-python3", "v1-link"])
def test_a_equal_to_b_in_disguise_is_refused(envs, project, disguise):
    done = gpufit_ab(
        project,
        "--a",
        f"python={envs['v1']}",
        "--b",
        f"python={envs[disguise]}",
        "--",
        "test_speed.py",
    )
    one_error(done, "--a and --b are the same environment")
    assert "both run" in done.stderr


def test_a_copy_of_the_venv_is_still_an_a_a_check(envs, project):
    done = gpufit_ab(
        project,
        "--a",
        f"python={envs['v1']}",
        "--b",
        f"python={envs['v1-copy']}",
        "--rounds",
        "1",
        "--",
        "test_speed.py",
    )
    assert "same environment" not in done.stderr
    assert "round 1/1" in done.stderr


def test_another_pytest_gpufit_on_one_side_is_refused_naming_both(envs, project):
    done = gpufit_ab(
        project,
        "--a",
        f"python={envs['v1']}",
        "--b",
        f"python={envs['other-gpufit']}",
        "--",
        "test_speed.py",
    )
    one_error(done, "has pytest-gpufit 0.1.0 and side B")
    assert "has 9.9.9" in done.stderr


@pytest.mark.parametrize(
    ("test", "b_outcome"), [("test_output", "1 failed"), ("test_gated", "1 skipped")]
)
def test_a_test_that_fails_or_skips_on_b_only_is_never_same(
    envs, project, tmp_path, test, b_outcome
):
    out = tmp_path / "ab.json"
    done = gpufit_ab(
        project,
        "--a",
        f"python={envs['v1']}",
        "--b",
        f"python={envs['v3']}",
        "--rounds",
        "1",
        "--inconclusive",
        "ok",
        "--json",
        str(out),
        "--",
        "test_speed.py",
        f"test_extra.py::{test}",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["verdict"] == "regressed"
    assert [d["test"] for d in data["outcomes"]] == [f"test_extra.py::{test}"]
    assert f"outcome differs: test_extra.py::{test}: A 1 passed; B {b_outcome}" in done.stdout


def test_too_few_rounds_never_pass_even_with_inconclusive_ok(envs, project, tmp_path):
    out = tmp_path / "ab.json"
    done = gpufit_ab(
        project,
        "--a",
        f"python={envs['v1']}",
        "--b",
        f"python={envs['v1-copy']}",
        "--rounds",
        "2",
        "--inconclusive",
        "ok",
        "--json",
        str(out),
        "--",
        "test_speed.py",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "too few rounds" in done.stdout
    assert json.loads(out.read_text())["exit_code"] == 1


@pytest.mark.parametrize(
    ("tolerance", "expected"),
    [("0%", "band of zero width"), ("100%", "cannot fall below 0"), ("250%", "below 0")],
)
def test_a_tolerance_that_leaves_no_verdict_is_refused(envs, project, tolerance, expected):
    done = gpufit_ab(
        project,
        "--a",
        f"python={envs['v1']}",
        "--b",
        f"python={envs['v1-copy']}",
        "--tolerance",
        tolerance,
        "--",
        "test_speed.py",
    )
    one_error(done, expected)


@pytest.mark.parametrize("option", ["--json", "--markdown"])
def test_an_unwritable_output_is_refused_before_the_rounds(envs, project, tmp_path, option):
    (tmp_path / "a-file").write_text("not a folder")
    done = gpufit_ab(
        project,
        "--a",
        f"python={envs['v1']}",
        "--b",
        f"python={envs['v1-copy']}",
        option,
        str(tmp_path / "a-file" / "ab.out"),
        "--",
        "test_speed.py",
    )
    one_error(done, f"{option} {tmp_path / 'a-file' / 'ab.out'}: cannot write there")
    assert "is a file, not a folder" in done.stderr
