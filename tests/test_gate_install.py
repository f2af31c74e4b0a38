"""The GPU gate workflow installs what its suites need (issue 22, item 1).

The gate job's own install steps, read from ``.github/workflows/gpu-gate.yml`` and run as they
are (bash, the workflow's ``env:``, the matrix values of a class), in a fresh virtual
environment; then the workflow's suites collected there as a gate job of that class collects
them, under ``--gpufit-on-missing=fail``, and every check the job keeps asked for its backend
(a missing extra fails a gate) and the server program it launches (``gate_install_check.py``).

What runs here is the CPU class's job: PyTorch's CPU build and ``transformers serve``. A GPU
class installs the CUDA build and vLLM, too large to install here; its items are collected in
the same environment for their extras, and the engine step is checked to install the program
their launch commands start. One environment per session (about 1-3 minutes, most of it
unpacking torch); pip reads this machine's configuration as a runner's pip would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parent.parent
TESTS = Path(__file__).parent
WORKFLOW = ROOT / ".github" / "workflows" / "gpu-gate.yml"
INSTALL_STEPS = ("Install torch", "Install the serving engine", "Install pytest-gpufit")


def gate() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def step(name: str) -> dict[str, Any]:
    found = [s for s in gate()["jobs"]["gate"]["steps"] if s.get("name") == name]
    assert len(found) == 1, f"gpu-gate.yml: one gate step named {name!r}"
    return dict(found[0])


def gate_suites() -> list[str]:
    """The test paths the Gate step gives pytest (its words before the first option)."""
    script = step("Gate")["run"].replace("\\\n", " ")
    line = next(x for x in script.splitlines() if "python -m pytest" in x)
    words = shlex.split(line.split("python -m pytest", 1)[1])
    return [w for w in words[: next(i for i, w in enumerate(words) if w.startswith("-"))]]


def environment(venv_dir: Path, **matrix: str) -> dict[str, str]:
    """The step's environment: this process's (pip's configuration included), less what points
    at the development venv, plus the workflow's env and the matrix values."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin"  # GITHUB_PATH's venv first
    env.update({k: str(v) for k, v in gate()["env"].items()})
    env.update(matrix)
    # This machine reaches PyPI but not PyTorch's index: pip would retry that one ~85 s per
    # package before taking the wheel on disk. A runner reaches both; no retry loses nothing.
    env.update(PIP_RETRIES="0", PIP_NO_COMPILE="1")
    return env


@pytest.fixture(scope="session")
def cpu_class_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with exactly what a CPU-class gate job installs."""
    # The workflow's "Python environment" step makes .venv in the checkout and puts its bin on
    # GITHUB_PATH; here the venv goes to a temporary folder and on PATH, the rest as written.
    made = step("Python environment")["run"].splitlines()
    assert made == ["python3 -m venv .venv", 'echo "$PWD/.venv/bin" >> "$GITHUB_PATH"']
    venv_dir = tmp_path_factory.mktemp("gate") / "venv"
    venv.EnvBuilder(with_pip=True).create(venv_dir)
    env = environment(venv_dir, CLASS_GPUS="none")
    for name in INSTALL_STEPS:
        result = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step(name)["run"]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert result.returncode == 0, f"step {name!r} failed:\n{result.stderr[-4000:]}"
    return venv_dir


def collect(venv_dir: Path, runner: str, *policy: str) -> subprocess.CompletedProcess[str]:
    """The gate job's collection of its class's checks, with the install check loaded."""
    env = environment(venv_dir, CLASS_GPUS="none")
    env["PYTHONPATH"] = str(TESTS)  # gate_install_check only; pytest_gpufit is the venv's
    return subprocess.run(
        [str(venv_dir / "bin" / "python"), "-m", "pytest", *gate_suites(), "--collect-only"]
        + ["-q", "-p", "no:cacheprovider", "-p", "gate_install_check", *policy]
        + ["--gpufit-runners=gpufit-runners.yaml", f"--gpufit-runner={runner}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_install_is_the_workflows_own_and_the_venv_is_fresh(cpu_class_venv: Path) -> None:
    python = str(cpu_class_venv / "bin" / "python")
    code = (
        "import json, torch, pytest_gpufit, importlib.metadata as m; "
        "print(json.dumps([torch.__version__, pytest_gpufit.__file__, "
        "sorted(d.metadata['Name'].lower() for d in m.distributions())]))"
    )
    shown = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    version, package, names = json.loads(shown.stdout)
    # The CPU class's torch: the workflow's version, the CPU build.
    assert version == f"{gate()['env']['TORCH_VERSION']}+cpu"
    assert Path(package).is_relative_to(ROOT)  # the checkout, installed editable
    assert "vllm" not in names  # the GPU classes' engine is not the CPU class's
    # Every requirement of the extras the workflow names, and the CPU engine's server.
    for wanted in [*extra_requirements(gate()["env"]["GATE_EXTRAS"]), "fastapi"]:
        assert wanted in names, wanted


def extra_requirements(extras: str) -> list[str]:
    """The distribution names that pyproject.toml's extras (comma-separated) require."""
    text = (ROOT / "pyproject.toml").read_text()
    names = []
    for extra in extras.split(","):
        listed = re.search(rf"^{re.escape(extra)} = \[(.*)\]$", text, re.MULTILINE)
        assert listed, f"pyproject.toml declares no extra {extra!r}"
        names += [
            re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower()
            for r in re.findall(r'"([^"]+)"', listed.group(1))
        ]
    assert names, extras
    return names


def test_the_cpu_class_collects_its_checks_with_nothing_missing(cpu_class_venv: Path) -> None:
    result = collect(cpu_class_venv, "cpu", "--gpufit-on-missing=fail")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    # Every check of the CPU class: the CPU example suites, in-process and served.
    assert "gate-install: 10 suite checks, 0 problem(s)" in out, out[-4000:]
    assert "suites/serve-cpu-example.yaml::tiny-transformers-serve::load" in out


def test_the_gpu_classes_collect_their_checks_with_no_missing_extra(cpu_class_venv: Path) -> None:
    # No GPU here, so the class's expect would stop the session: the job's selection is
    # previewed on its catalog cards instead (simulation plans; it cannot gate, so no fail).
    pool = yaml.safe_load((ROOT / "gpufit-runners.yaml").read_text())["runners"]
    for runner in ("pro6000", "h100"):
        cards = next(r["gpus"] for r in pool if r["name"] == runner)
        result = collect(cpu_class_venv, runner, f"--gpufit-simulate={cards}")
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-4000:]
        problems = re.findall(r"^gate-install: (\S+::\S+): (.*)$", out, re.M)
        # The only thing missing is the GPU classes' engine, which their own step installs.
        assert all(why == "launch: vllm is not on PATH" for _, why in problems), problems
        assert "gate-install: 0 suite checks" not in out
    engine = gate()["env"]["ENGINE"]
    assert re.fullmatch(r"vllm==[0-9.]+", engine), engine
    assert 'python -m pip install "$ENGINE"' in step("Install the serving engine")["run"]


def test_a_missing_extra_is_what_the_check_reports(tmp_path: Path) -> None:
    """The check itself, in this environment and in one without the endpoint extra (aiohttp
    shadowed by a module that fails to import, first on the path)."""

    def check() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "suites/serve-cpu-example.yaml", "--collect-only"]
            + ["-q", "-p", "no:cacheprovider", "-p", "gate_install_check"]
            + ["--gpufit-on-missing=fail"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (tmp_path, TESTS, ROOT)))},
            capture_output=True,
            text=True,
            timeout=300,
        )
        return result.stdout + result.stderr

    out = check()
    assert "gate-install: 5 suite checks, 0 problem(s)" in out, out[-3000:]
    (tmp_path / "aiohttp.py").write_text("raise ImportError('aiohttp is not installed here')\n")
    out = check()
    assert "gate-install: 5 suite checks, 5 problem(s)" in out, out[-3000:]
    assert "the openai backend needs aiohttp and httpx" in out
    assert "pip install 'pytest-gpufit[endpoint]'" in out
