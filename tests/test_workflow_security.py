"""Untrusted code never reaches a GPU runner, and the shipped workflows are safe by zizmor's
measure: zizmor on the shipped workflows, the action and the documented examples; zizmor on the
classic holes; and ``scripts/workflow_check.py``, the one check zizmor does not make (a
self-hosted runner a pull request can reach with no approval), on the shipped workflows and on
bad ones.

zizmor comes with the dev extra (``pip install -e '.[dev]'``) and runs offline; where it is
missing the zizmor tests skip, naming the fix (``.ci/run`` and CI always have it).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]
SHIPPED = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
SCRIPT = ROOT / "scripts" / "workflow_check.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("workflow_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["workflow_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


workflow_check = _load_script()
check_workflow = workflow_check.check_workflow
markdown_workflows = workflow_check.markdown_workflows
WorkflowError = workflow_check.WorkflowError


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_workflows_keep_forks_off_the_gpu_runners(path: Path) -> None:
    findings = check_workflow(path.read_text("utf-8"), str(path.relative_to(ROOT)))
    assert findings == [], "\n".join(f.text() for f in findings)


def test_the_shipped_workflows_were_found() -> None:
    assert {p.name for p in SHIPPED} >= {"ci.yml", "gpu-gate.yml"}


def test_workflows_in_docs_ci_md_keep_forks_off_the_gpu_runners() -> None:
    text = (ROOT / "docs" / "ci.md").read_text("utf-8")
    blocks = markdown_workflows(text)
    assert blocks, "docs/ci.md ships at least the safe pattern as a whole workflow"
    for line, block in blocks:
        findings = check_workflow(block, f"docs/ci.md (block at line {line})")
        assert findings == [], "\n".join(f.text() for f in findings)


def test_the_check_is_not_part_of_the_installed_package() -> None:
    # A development check of workflow files: it lives in scripts/, not in the runtime package.
    assert not (ROOT / "pytest_gpufit" / "fleet" / "workflow_check.py").exists()
    assert importlib.util.find_spec("pytest_gpufit.fleet.workflow_check") is None


# ---- zizmor ----------------------------------------------------------------------------------

ZIZMOR_INSTALL = "pip install -e '.[dev]' (zizmor, offline)"


def zizmor(*paths: Path, persona: str = "regular") -> list[dict[str, Any]]:
    """zizmor's findings (offline, JSON) on ``paths``, or skip saying what is missing."""
    exe = shutil.which("zizmor") or shutil.which("zizmor", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip(f"zizmor is not installed: {ZIZMOR_INSTALL}")
    result = subprocess.run(
        [exe, "--offline", "--format", "json", f"--persona={persona}", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode in (0, 10, 11, 12, 13, 14), result.stderr  # 1x: findings
    found: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return found


def where(finding: dict[str, Any]) -> tuple[str, int]:
    """(audit id, first line) of a zizmor finding, lines counted from 1."""
    location = finding["locations"][0]["concrete"]["location"]["start_point"]
    return finding["ident"], location["row"] + 1


def test_zizmor_finds_nothing_in_the_shipped_workflows_and_the_action() -> None:
    findings = zizmor(ROOT / ".github" / "workflows", ROOT / "action.yml")
    shown = [f"{f['ident']}: {f['desc']} {where(f)}" for f in findings]
    assert findings == [], "\n".join(shown)


def test_zizmor_finds_nothing_in_the_workflows_docs_ci_md_offers(tmp_path: Path) -> None:
    blocks = markdown_workflows((ROOT / "docs" / "ci.md").read_text("utf-8"))
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    for line, block in blocks:
        (folder / f"docs-ci-md-line-{line}.yml").write_text(block)
    findings = zizmor(folder)
    assert findings == [], [(f["ident"], f["locations"][0]["symbolic"]["key"]) for f in findings]


def test_zizmor_fails_the_workflows_as_they_were(tmp_path: Path) -> None:
    # The shipped gate before issue 22: ${{ }} in run:, a token left in .git/config, the
    # default permissions, actions pinned to a moving tag. zizmor sees each, so CI would too.
    before = tmp_path / "gpu-gate.yml"
    before.write_text(
        "name: g\non: {push: {branches: [main]}}\njobs:\n  gate:\n    runs-on: ubuntu-latest\n"
        "    strategy: {matrix: {runner: [a]}}\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        '      - run: pytest --gpufit-runner="${{ matrix.runner }}"\n'
    )
    idents = {f["ident"] for f in zizmor(before)}
    assert idents >= {"unpinned-uses", "artipacked", "excessive-permissions"}, idents
    assert "template-injection" in {f["ident"] for f in zizmor(before, persona="pedantic")}


# ---- the checker on bad workflows ----------------------------------------------------------

HOLE = """
on: pull_request_target
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          ref: ${{ github.event.pull_request.head.sha }}
      - run: make test
"""


def zizmor_on(tmp_path: Path, text: str) -> list[tuple[str, int]]:
    path = tmp_path / "w.yml"
    path.write_text(text)
    return [where(f) for f in zizmor(path)]


# pull_request_target with a head checkout was this file's rule 1; zizmor's dangerous-triggers
# flags every pull_request_target (the checkout or not), so the rule was retired (issue 22).


def test_pull_request_target_with_a_head_checkout_is_the_classic_hole(tmp_path: Path) -> None:
    assert ("dangerous-triggers", 2) in zizmor_on(tmp_path, HOLE)
    assert check_workflow(HOLE, "w.yml") == []  # zizmor's, not this script's


CHECKOUT = "      - uses: actions/checkout@v4\n        with:\n"


@pytest.mark.parametrize(
    "checkout",
    [
        CHECKOUT + "          ref: ${{ github.event.pull_request.head.ref }}",
        CHECKOUT + "          ref: ${{ github.head_ref }}",
        CHECKOUT + "          repository: ${{ github.event.pull_request.head.repo.full_name }}",
        "      - run: gh pr checkout ${{ github.event.pull_request.number }}",
        "      - run: git fetch origin pull/${{ github.event.number }}/head",
    ],
)
def test_every_way_of_checking_out_the_head_is_found(tmp_path: Path, checkout: str) -> None:
    workflow = (
        "on:\n  pull_request_target:\n    types: [opened]\n"
        "jobs:\n  j:\n    runs-on: ubuntu-latest\n"
        f"    steps:\n{checkout}\n"
    )
    assert ("dangerous-triggers", 1) in zizmor_on(tmp_path, workflow)


def test_pull_request_target_without_a_head_checkout_is_flagged_too(tmp_path: Path) -> None:
    # Stricter than the retired rule: the trigger itself is the hazard (a later edit adds the
    # checkout, or a step runs the base branch's code on the fork's inputs).
    workflow = HOLE.replace(
        "        with:\n          ref: ${{ github.event.pull_request.head.sha }}\n", ""
    )
    assert ("dangerous-triggers", 2) in zizmor_on(tmp_path, workflow)


GPU_ON_PR = """
on: [push, pull_request]
jobs:
  gate:
    runs-on: [self-hosted, linux, gpu]
    steps:
      - uses: actions/checkout@v4
"""


def test_a_self_hosted_job_that_a_fork_pull_request_can_start_is_flagged() -> None:
    (finding,) = check_workflow(GPU_ON_PR, "w.yml")
    assert finding.rule == "self-hosted-pull-request" and finding.line == 4
    assert "self-hosted runners (self-hosted, linux, gpu)" in finding.message


@pytest.mark.parametrize(
    "change",
    [
        ("    runs-on:", "    environment: gpu-gate\n    runs-on:"),
        ("    runs-on:", "    environment: {name: gpu-gate}\n    runs-on:"),
        (
            "    runs-on:",
            "    if: github.event.pull_request.head.repo.full_name == github.repository\n"
            "    runs-on:",
        ),
        ("    runs-on:", "    if: ${{ !github.event.pull_request.head.repo.fork }}\n    runs-on:"),
        ("    runs-on:", "    if: github.event_name == 'push'\n    runs-on:"),
        ("[push, pull_request]", "{push: {branches: [main]}}"),
        ("[self-hosted, linux, gpu]", "ubuntu-latest"),
    ],
)
def test_the_safe_patterns_pass(change: tuple[str, str]) -> None:
    assert check_workflow(GPU_ON_PR.replace(*change), "w.yml") == []


def test_an_approval_of_a_needed_job_gates_the_jobs_after_it() -> None:
    workflow = """
on: pull_request
jobs:
  approve:
    runs-on: ubuntu-latest
    environment: gpu-gate
    steps: [{run: 'true'}]
  gate:
    needs: [approve]
    runs-on: [self-hosted, gpu]
    steps: [{run: 'true'}]
  other:
    runs-on: [self-hosted, gpu]
    steps: [{run: 'true'}]
"""
    assert [f.job for f in check_workflow(workflow, "w.yml")] == ["other"]


def test_an_or_in_the_fork_condition_does_not_count_as_keeping_forks_out() -> None:
    workflow = GPU_ON_PR.replace(
        "    runs-on:",
        "    if: github.event.pull_request.head.repo.full_name == github.repository || true\n"
        "    runs-on:",
    )
    assert len(check_workflow(workflow, "w.yml")) == 1


def test_matrix_labels_are_resolved_and_a_planned_matrix_is_assumed_self_hosted() -> None:
    literal = """
on: pull_request
jobs:
  gate:
    strategy:
      matrix:
        include:
          - labels: [self-hosted, h100]
    runs-on: ${{ matrix.labels }}
    steps: [{run: 'true'}]
"""
    assert "(self-hosted, h100)" in check_workflow(literal, "w.yml")[0].message
    hosted = literal.replace("[self-hosted, h100]", "[ubuntu-latest]")
    assert check_workflow(hosted, "w.yml") == []
    planned = literal.replace(
        "        include:\n          - labels: [self-hosted, h100]\n",
        "        include: ${{ fromJSON(needs.plan.outputs.matrix) }}\n",
    )
    (finding,) = check_workflow(planned, "w.yml")
    assert "runners an expression picks (${{ matrix.labels }})" in finding.message


def test_a_runner_group_counts_as_self_hosted() -> None:
    workflow = GPU_ON_PR.replace("[self-hosted, linux, gpu]", "{group: gpu-runners}")
    assert len(check_workflow(workflow, "w.yml")) == 1


@pytest.mark.parametrize("text", ["", "just text", "[1, 2]", "jobs: 3", "on: push\n"])
def test_what_is_not_a_workflow_has_no_findings(text: str) -> None:
    assert check_workflow(text, "w.yml") == []


def test_bad_yaml_is_one_error_naming_the_line() -> None:
    with pytest.raises(WorkflowError, match=r"^w\.yml:4: not a YAML workflow \(.+\)$"):
        check_workflow("on: push\njobs:\n  a: 1\n b: 2\n", "w.yml")


def test_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(GPU_ON_PR)
    good = tmp_path / "good.yml"
    good.write_text(GPU_ON_PR.replace("[push, pull_request]", "push"))
    run = [sys.executable, str(SCRIPT)]
    found = subprocess.run([*run, str(bad), str(good)], capture_output=True, text=True)
    assert found.returncode == 1 and f"{bad}:4: job gate:" in found.stdout
    clean = subprocess.run([*run, str(good)], capture_output=True, text=True)
    assert clean.returncode == 0 and "no finding in 1 file" in clean.stdout
    missing = subprocess.run([*run, str(tmp_path / "nope.yml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot read it" in missing.stderr
    assert "Traceback" not in missing.stderr


# ---- bypasses found by attacking the checker -------------------------------------------------


@pytest.mark.parametrize(
    "steps",
    [
        # the head's sha through an env variable, then checked out
        "    env:\n      PR_SHA: ${{ github.event.pull_request.head.sha }}\n    steps:\n"
        + CHECKOUT
        + "          ref: ${{ env.PR_SHA }}",
        # fetched and checked out by git in a run step
        "    steps:\n      - uses: actions/checkout@v4\n"
        "      - run: git fetch origin ${{ github.event.pull_request.head.sha }} && "
        "git checkout FETCH_HEAD",
        "    steps:\n      - run: |\n          git fetch origin ${{ github.head_ref }}\n"
        "          git checkout FETCH_HEAD",
    ],
)
def test_a_head_checkout_by_another_road_is_found(tmp_path: Path, steps: str) -> None:
    workflow = f"on: pull_request_target\njobs:\n  j:\n    runs-on: ubuntu-latest\n{steps}\n"
    assert ("dangerous-triggers", 1) in zizmor_on(tmp_path, workflow)


@pytest.mark.parametrize(
    "change",
    [
        # a negated fork condition lets only forks in
        (
            "    runs-on:",
            "    if: ${{ !(github.event.pull_request.head.repo.full_name == github.repository) }}"
            "\n    runs-on:",
        ),
        ("    runs-on:", '    if: "!!github.event.pull_request.head.repo.fork"\n    runs-on:'),
        # an environment an expression empties on pull requests asks no one
        (
            "    runs-on:",
            "    environment: ${{ github.event_name == 'push' && 'production' || '' }}\n"
            "    runs-on:",
        ),
        (
            "    runs-on:",
            "    environment:\n      name: ${{ github.event_name == 'push' && 'gpu' || '' }}\n"
            "    runs-on:",
        ),
        # a self-hosted runner's own label that merely starts like a hosted image's
        ("[self-hosted, linux, gpu]", "ubuntu-h100"),
        ("[self-hosted, linux, gpu]", "[ubuntu-latest, gpu]"),
    ],
)
def test_conditions_environments_and_labels_that_only_look_safe_are_flagged(
    change: tuple[str, str],
) -> None:
    assert [f.rule for f in check_workflow(GPU_ON_PR.replace(*change), "w.yml")] == [
        "self-hosted-pull-request"
    ]


@pytest.mark.parametrize(
    "label", ["ubuntu-latest", "ubuntu-24.04", "ubuntu-22.04-arm", "windows-2025", "macos-15"]
)
def test_the_hosted_images_stay_hosted(label: str) -> None:
    assert check_workflow(GPU_ON_PR.replace("[self-hosted, linux, gpu]", label), "w.yml") == []
