"""Untrusted code never reaches a GPU runner: the shipped workflows, and the checker on bad ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fleet.workflow_check import check_workflow, markdown_workflows

ROOT = Path(__file__).parents[1]
SHIPPED = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))


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


def test_pull_request_target_with_a_head_checkout_is_the_classic_hole() -> None:
    (finding,) = check_workflow(HOLE, "w.yml")
    assert finding.rule == "pull-request-target-head-checkout"
    assert finding.line == 4 and finding.job == "build"
    assert finding.text().startswith("w.yml:4: job build: step 'actions/checkout@v4' checks out")


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
def test_every_way_of_checking_out_the_head_is_found(checkout: str) -> None:
    workflow = (
        "on:\n  pull_request_target:\n    types: [opened]\n"
        "jobs:\n  j:\n    runs-on: ubuntu-latest\n"
        f"    steps:\n{checkout}\n"
    )
    assert [f.rule for f in check_workflow(workflow, "w.yml")] == [
        "pull-request-target-head-checkout"
    ]


def test_pull_request_target_without_a_head_checkout_is_not_flagged() -> None:
    workflow = HOLE.replace(
        "        with:\n          ref: ${{ github.event.pull_request.head.sha }}\n", ""
    )
    assert check_workflow(workflow, "w.yml") == []


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
    with pytest.raises(GpufitError, match=r"^w\.yml:4: not a YAML workflow \(.+\)$"):
        check_workflow("on: push\njobs:\n  a: 1\n b: 2\n", "w.yml")


def test_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(HOLE)
    good = tmp_path / "good.yml"
    good.write_text(GPU_ON_PR.replace("[push, pull_request]", "push"))
    run = [sys.executable, "-m", "pytest_gpufit.fleet.workflow_check"]
    found = subprocess.run([*run, str(bad), str(good)], capture_output=True, text=True)
    assert found.returncode == 1 and f"{bad}:4: job build:" in found.stdout
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
def test_a_head_checkout_by_another_road_is_found(steps: str) -> None:
    workflow = f"on: pull_request_target\njobs:\n  j:\n    runs-on: ubuntu-latest\n{steps}\n"
    assert [f.rule for f in check_workflow(workflow, "w.yml")] == [
        "pull-request-target-head-checkout"
    ]


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
