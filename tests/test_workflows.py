"""The workflows and the composite action parse, and call only commands and options that exist.

actionlint would be the first choice; its PyPI wrapper downloads a binary at install time,
which CI here cannot, so this is the equivalent check the issue allows.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_gpufit.cli import parser
from pytest_gpufit.settings import OPTIONS

ROOT = Path(__file__).parent.parent
FILES = sorted((ROOT / ".github" / "workflows").glob("*.yml")) + [ROOT / "action.yml"]
FLAGS = {o.flag for o in OPTIONS}
ENVS = {o.env for o in OPTIONS}
VERBS = set(parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def steps(data: dict[Any, Any]) -> list[dict[str, Any]]:
    if "runs" in data:
        return list(data["runs"]["steps"])
    return [s for job in data["jobs"].values() for s in job.get("steps", [])]


def commands(data: dict[Any, Any]) -> list[str]:
    return [str(s["run"]) for s in steps(data) if "run" in s]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_structure(path: Path) -> None:
    data = load(path)
    if "runs" in data:
        assert data["runs"]["using"] == "composite"
        assert all(s.get("shell") for s in data["runs"]["steps"] if "run" in s)
        used = set(re.findall(r"inputs\.([a-z-]+)", path.read_text()))
        assert used <= set(data["inputs"]), used - set(data["inputs"])
    else:
        assert True in data or "on" in data  # PyYAML reads the key `on` as True
        for name, job in data["jobs"].items():
            assert "runs-on" in job, name
            for need in [job["needs"]] if isinstance(job.get("needs"), str) else []:
                assert need in data["jobs"]
    for step in steps(data):
        assert ("run" in step) != ("uses" in step), step


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_gpufit_command_and_option_exists(path: Path) -> None:
    for command in commands(load(path)):
        text = command.replace("\\\n", " ")
        for verb in re.findall(r"(?<![\w-])gpufit\"?\s+([a-z]+)", text):
            assert verb in VERBS, f"{path.name}: gpufit {verb} does not exist"
        for flag in re.findall(r"(--gpufit-[a-z-]+)", text):
            assert flag in FLAGS, f"{path.name}: {flag} is not an option"
    for env in re.findall(r"\b(GPUFIT_[A-Z_]+)\b", path.read_text()):
        assert env in ENVS, f"{path.name}: {env} is not an option's variable"


def test_paths_the_workflows_run_exist() -> None:
    for path in FILES:
        for command in commands(load(path)):
            words = shlex.split(command.replace("${{", "").replace("}}", ""), posix=True)
            for word in words:
                if word.startswith("suites/") or word.startswith(".ci/"):
                    assert (ROOT / word).exists(), f"{path.name}: {word} does not exist"


def test_gate_fails_on_missing_and_deploy_waits_on_it() -> None:
    gate = load(ROOT / ".github" / "workflows" / "gpu-gate.yml")
    text = " ".join(commands(gate))
    assert "--gpufit-on-missing=fail" in text and "--gpufit-expect=" in text
    assert "--gpufit-baseline=" in text and "--gpufit-report=" in text
    assert gate["jobs"]["deploy"]["needs"] == "gate" and gate["jobs"]["deploy"]["environment"]
    assert "self-hosted" in gate["jobs"]["gate"]["strategy"]["matrix"]["include"][0]["labels"]
    assert gate["jobs"]["gate"]["concurrency"]["group"]
    dispatch = gate[True]["workflow_dispatch"]["inputs"]["baseline"]
    assert set(dispatch["options"]) == {"compare", "save"}


def test_expect_expressions_in_the_matrix_parse() -> None:
    from pytest_gpufit.expect import parse_expect

    gate = load(ROOT / ".github" / "workflows" / "gpu-gate.yml")
    for entry in gate["jobs"]["gate"]["strategy"]["matrix"]["include"]:
        parse_expect(entry["expect"])


def test_the_command_check_sees_the_commands() -> None:
    found = {
        v
        for path in FILES
        for c in commands(load(path))
        for v in re.findall(r"(?<![\w-])gpufit\"?\s+([a-z]+)", c)
    }
    flags = {
        f
        for path in FILES
        for c in commands(load(path))
        for f in re.findall(r"(--gpufit-[a-z-]+)", c)
    }
    assert found == {"probe"}
    assert {"--gpufit-on-missing", "--gpufit-expect", "--gpufit-baseline"} <= flags
