"""The house has layers (pyproject.toml's import-linter contract), and the plugin stays light."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"
)

# What importing the plugin must never load: each costs start-up time or a CUDA context.
HEAVY = (
    "torch",
    "transformers",
    "vllm",
    "safetensors",
    "tokenizers",
    "numpy",
    "pynvml",
    "aiohttp",
    "httpx",
    "openai",
    "matplotlib",
    "yaml",
)


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the package under ``root``, with ``root``'s pyproject.toml."""
    return subprocess.run(
        [sys.executable, "-c", LINT],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_layers_contract_holds() -> None:
    pytest.importorskip("importlinter")
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 1 kept, 0 broken." in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # A late import counts: the session reaching for the suites is the old loop.
        (
            "session.py",
            "def _late():\n    from pytest_gpufit.suites.schema import parse_suite\n",
            "pytest_gpufit.session is not allowed to import pytest_gpufit.suites",
        ),
        (
            "settings.py",
            "from pytest_gpufit.fleet.pool import load_pool\n",
            "pytest_gpufit.settings is not allowed to import pytest_gpufit.fleet",
        ),
        (
            "stash.py",
            "from pytest_gpufit.requirements import Requirement\n",
            "pytest_gpufit.stash is not allowed to import pytest_gpufit.requirements",
        ),
    ],
)
def test_an_import_against_the_layers_breaks_the_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    pytest.importorskip("importlinter")
    shutil.copytree(ROOT / "pytest_gpufit", tmp_path / "pytest_gpufit")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "pytest_gpufit" / module).open("a") as file:
        file.write("\n" + line)
    out = _lint(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert broken in out.stdout


def test_a_module_without_a_layer_breaks_the_contract(tmp_path: Path) -> None:
    pytest.importorskip("importlinter")
    shutil.copytree(ROOT / "pytest_gpufit", tmp_path / "pytest_gpufit")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "pytest_gpufit" / "newcomer.py").write_text('"""Placed nowhere."""\n')
    out = _lint(tmp_path)
    assert out.returncode == 1
    assert "- pytest_gpufit.newcomer" in out.stdout


def test_importing_the_plugin_loads_no_heavy_module() -> None:
    code = (
        f"import sys, pytest_gpufit.plugin; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
