"""``gpufit baseline`` reads the configuration a pytest session started in the same folder
reads, found by pytest itself (issue 19 #6): every form of configuration file pytest knows,
addopts, and what happens when the plugin is off there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PYTEST_9 = int(pytest.__version__.split(".")[0]) >= 9
SUITE = (
    "suite: s\ntargets:\n"
    "  - {name: t, model: qwen3-0.6b, weights: random, device: cpu, checks: {fits: {}}}\n"
)


def _run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GPUFIT_", "PYTEST_"))}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
        check=False,
    )


def _list(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _run(cwd, "-m", "pytest_gpufit.cli", "baseline", "list", env=env)


@pytest.mark.skipif(not PYTEST_9, reason="pytest.toml and [tool.pytest] are pytest 9's")
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("pytest.toml", '[pytest]\ngpufit_baseline_dir = "from-toml"\n'),
        (".pytest.toml", '[pytest]\ngpufit_baseline_dir = "from-toml"\n'),
        ("pyproject.toml", '[tool.pytest]\ngpufit_baseline_dir = "from-toml"\n'),
    ],
)
def test_the_command_reads_pytest_9_configuration_files(
    tmp_path: Path, name: str, text: str
) -> None:
    (tmp_path / name).write_text(text)
    sub = tmp_path / "sub"
    sub.mkdir()
    out = _list(sub)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"no baseline runs in {tmp_path / 'from-toml'}"


@pytest.mark.skipif(not PYTEST_9, reason="pytest.toml is pytest 9's")
def test_a_parent_pytest_toml_wins_over_a_bare_pyproject_below_as_in_pytest(
    tmp_path: Path,
) -> None:
    # The case of the issue: the old finder stopped at the bare pyproject.toml (rootdir sub/)
    # while pytest reads the parent's pytest.toml (rootdir tmp_path).
    (tmp_path / "pytest.toml").write_text('[pytest]\ngpufit_baseline_dir = "store"\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\n')
    (sub / "s.gpufit.yaml").write_text(SUITE)
    # The plugin saves where pytest's rootdir and ini say...
    run = _run(sub, "-m", "pytest", "-p", "no:cacheprovider", "--gpufit-baseline=save")
    assert run.returncode == 0, run.stdout + run.stderr
    assert list((tmp_path / "store").rglob("accepted"))
    # ...and the command, started in the same folder, reads the same store.
    out = _list(sub)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"baselines in {tmp_path / 'store'}:\n"), out.stdout


def test_the_command_honours_addopts_and_overrides_as_the_plugin_does(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = --gpufit-baseline-dir=from-addopts\ngpufit_baseline_dir = from-ini\n"
    )
    out = _list(tmp_path)
    assert out.stdout.strip() == f"no baseline runs in {tmp_path / 'from-addopts'}", out.stderr
    out = _list(tmp_path, env={"PYTEST_ADDOPTS": "-o gpufit_baseline_dir=from-o -p no:randomly"})
    assert out.stdout.strip() == f"no baseline runs in {tmp_path / 'from-addopts'}"
    (tmp_path / "pytest.ini").write_text("[pytest]\ngpufit_baseline_dir = from-ini\n")
    out = _list(tmp_path, env={"PYTEST_ADDOPTS": "-o gpufit_baseline_dir=from-o"})
    assert out.stdout.strip() == f"no baseline runs in {tmp_path / 'from-o'}", out.stderr


def test_the_command_imports_no_conftest(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text("raise SystemExit('conftest imported')\n")
    out = _list(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"no baseline runs in {tmp_path / '.gpufit' / 'baselines'}"


def test_a_pytest_addopts_pytest_cannot_split_is_one_error(tmp_path: Path) -> None:
    """An unclosed quote in PYTEST_ADDOPTS was a ValueError traceback from `gpufit baseline`."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    out = _list(tmp_path, env={"PYTEST_ADDOPTS": "-o 'gpufit_baseline_dir=a b"})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert (
        'PYTEST_ADDOPTS="-o \'gpufit_baseline_dir=a b": pytest stopped before reading its '
        "configuration: No closing quotation"
    ) in out.stderr


def test_without_the_plugin_the_command_says_so(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:gpufit\n")
    out = _list(tmp_path)
    assert out.returncode == 2
    assert "the gpufit plugin is not active in a pytest session started here" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_setting_in_the_ini_file_names_its_source(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\ngpufit_baseline_tolerance = lots\n")
    out = _list(tmp_path)
    assert out.returncode == 2
    assert "ini gpufit_baseline_tolerance: expected a percentage such as '10%'" in out.stderr
