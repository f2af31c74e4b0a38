"""Check GitHub Actions workflows for the two ways untrusted code reaches a GPU runner.

1. ``pull_request_target`` with a checkout of the pull request's head: that event runs in the
   base repository's context (its secrets, a write token, its self-hosted runners) for any
   fork's pull request; checking out the head then builds and runs the fork's code there.
2. A job on a self-hosted runner that a ``pull_request`` (a fork's included) can start, with no
   approval in between: a fork's pull request then runs its code on the machine, which keeps
   what it leaves behind for the next job. The safe pattern: the gate on pushes to protected
   branches, and on pull requests only in a job behind a protected environment (required
   reviewers), or one its ``if:`` keeps from forks.

Usage: ``python -m pytest_gpufit.fleet.workflow_check .github/workflows/*.yml`` (exit 1 on a
finding, 2 on a file that cannot be read). Only what a workflow file says is checked: whether an
environment really has required reviewers is a repository setting, checked in its settings.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pytest_gpufit.errors import GpufitError

# What checks out (or fetches) a pull request's own code rather than the base branch.
_HEAD_REF = re.compile(
    r"github\.event\.pull_request\.head\.(sha|ref)|github\.head_ref|"
    r"github\.event\.pull_request\.merge_commit_sha|refs/pull/|"
    r"github\.event\.pull_request\.head\.repo\.full_name"
)
_HEAD_FETCH = re.compile(r"gh\s+pr\s+checkout|refs/pull/|\bpull/\$\{\{|git\s+fetch\b.*\bpull/")
# A git command that, given the head's ref or sha, fetches or checks out its code.
_GIT = re.compile(r"\bgit\s+(fetch|checkout|switch|pull|reset|clone|worktree)\b")
# GitHub's hosted images (a larger runner's own name is counted as self-hosted: it may be).
_HOSTED = re.compile(
    r"^(ubuntu-(latest|[0-9]{2}\.[0-9]{2})(-arm)?|windows-(latest|[0-9]{4}|11-arm)|"
    r"macos-(latest|[0-9]{2})(-(large|xlarge|intel|arm64))?)$"
)
# A negation before a group or of a negation turns a fork guard around.
_TURNED = re.compile(r"!\s*\(|!\s*!")
# ``if:`` conditions that keep a fork's pull request out of a job.
_SAME_REPO = re.compile(
    r"github\.event\.pull_request\.head\.repo\.full_name\s*==\s*github\.repository|"
    r"!\s*github\.event\.pull_request\.head\.repo\.fork|"
    r"github\.event\.pull_request\.head\.repo\.fork\s*==\s*false|"
    r"github\.event_name\s*==\s*'(push|workflow_dispatch|schedule)'|"
    r"github\.event_name\s*!=\s*'pull_request'"
)
_MATRIX_REF = re.compile(r"^\$\{\{\s*matrix\.([A-Za-z0-9_-]+)\s*\}\}$")


@dataclass(frozen=True)
class Finding:
    """One way untrusted code can reach a runner, at a file, line and job."""

    path: str
    line: int
    job: str
    rule: str  # pull-request-target-head-checkout | self-hosted-pull-request
    message: str

    def text(self) -> str:
        return f"{self.path}:{self.line}: job {self.job}: {self.message}"


def _triggers(workflow: Mapping[Any, Any]) -> set[str]:
    """The event names of ``on:`` (which YAML 1.1 reads as the key True)."""
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on}
    if isinstance(on, list):
        return {str(e) for e in on}
    if isinstance(on, Mapping):
        return {str(e) for e in on}
    return set()


def _lines(text: str) -> dict[str, int]:
    """Line (1-based) of each job's key under ``jobs:``; 1 where it cannot be found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return out
    for key, value in root.value:
        if key.value == "jobs" and isinstance(value, yaml.MappingNode):
            for job_key, _ in value.value:
                out[str(job_key.value)] = job_key.start_mark.line + 1
    return out


def _labels(job: Mapping[str, Any]) -> tuple[list[str], bool]:
    """The runner labels of a job, and whether they were read in full (an expression that
    does not name a literal matrix entry cannot be)."""
    runs_on = job.get("runs-on")
    if isinstance(runs_on, Mapping):  # {group: ..., labels: ...}: a runner group
        labels = runs_on.get("labels") or []
        labels = [labels] if isinstance(labels, str) else list(labels)
        return [str(x) for x in labels] + ["group:" + str(runs_on.get("group"))], True
    values = [runs_on] if isinstance(runs_on, str) else list(runs_on or [])
    out: list[str] = []
    known = True
    for value in (str(v) for v in values):
        match = _MATRIX_REF.match(value.strip())
        if match:
            resolved = _matrix_values(job, match.group(1))
            if resolved is None:
                known = False
            else:
                out += resolved
        elif "${{" in value:
            known = False
        else:
            out.append(value)
    return out, known


def _matrix_values(job: Mapping[str, Any], name: str) -> list[str] | None:
    """Every label a literal ``strategy.matrix`` gives ``matrix.<name>``; None when the
    matrix comes from an expression (another job's output)."""
    matrix = (job.get("strategy") or {}).get("matrix")
    if not isinstance(matrix, Mapping):
        return None
    out: list[str] = []
    entries = matrix.get("include")
    if isinstance(entries, str):
        return None
    for entry in entries or []:
        if isinstance(entry, Mapping) and name in entry:
            value = entry[name]
            if isinstance(value, str) and "${{" in value:
                return None
            out += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if name in matrix:
        axis = matrix[name]
        if not isinstance(axis, list):
            return None
        for value in axis:
            out += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return out or None


def _self_hosted(labels: Sequence[str]) -> bool:
    # A label GitHub's hosted images do not have (gpu, h100, ubuntu-h100, a larger runner's
    # own name) may be a self-hosted runner's: counted as such.
    return any(label == "self-hosted" or label.startswith("group:") for label in labels) or not all(
        _HOSTED.match(label) for label in labels
    )


def _approval(environment: Any) -> bool:
    """Whether ``environment:`` names one environment whatever the event (an expression may
    name none on a pull request, and then nobody is asked)."""
    name = environment.get("name") if isinstance(environment, Mapping) else environment
    return isinstance(name, str) and bool(name.strip()) and "${{" not in name


def _gated(jobs: Mapping[str, Any], name: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a job waits for an approval (a protected environment), or keeps forks out with
    its ``if:``, itself or through a job it ``needs:``."""
    job = jobs.get(name)
    if not isinstance(job, Mapping) or name in seen:
        return False
    if _approval(job.get("environment")):
        return True
    condition = str(job.get("if", ""))
    if _SAME_REPO.search(condition) and "||" not in condition and not _TURNED.search(condition):
        return True
    needs = job.get("needs") or []
    needs = [needs] if isinstance(needs, str) else list(needs)
    return any(_gated(jobs, str(n), seen | {name}) for n in needs)


def _head_env(*envs: Any) -> list[str]:
    """Names of ``env:`` variables set to the pull request's head (its ref, sha or repo)."""
    return [
        str(key)
        for env in envs
        if isinstance(env, Mapping)
        for key, value in env.items()
        if _HEAD_REF.search(str(value))
    ]


def _names_head(text: str, names: Sequence[str]) -> bool:
    """Whether ``text`` names the head: directly, or through one of the ``names`` variables."""
    if _HEAD_REF.search(text):
        return True
    return any(re.search(rf"\benv\.{re.escape(n)}\b|\$\{{?{re.escape(n)}\b", text) for n in names)


def _head_checkouts(job: Mapping[str, Any], workflow_env: Any = None) -> list[str]:
    """The steps of a job that check out or fetch the pull request's head."""
    found = []
    for index, step in enumerate(job.get("steps") or []):
        if not isinstance(step, Mapping):
            continue
        names = _head_env(workflow_env, job.get("env"), step.get("env"))
        name = str(step.get("name") or step.get("uses") or f"step {index + 1}")
        uses = str(step.get("uses", ""))
        with_ = step.get("with") or {}
        if (
            uses.startswith("actions/checkout")
            and isinstance(with_, Mapping)
            and any(_names_head(str(with_.get(k, "")), names) for k in ("ref", "repository"))
        ):
            found.append(name)
        run = str(step.get("run", ""))
        if _HEAD_FETCH.search(run) or (_GIT.search(run) and _names_head(run, names)):
            found.append(name)
    return found


def check_workflow(text: str, path: str) -> list[Finding]:
    """Findings of one workflow file's text; a file that is not YAML is one GpufitError."""
    try:
        workflow = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(error, "problem", None) or type(error).__name__
        raise GpufitError(f"{where}: not a YAML workflow ({problem})") from None
    if not isinstance(workflow, Mapping) or not isinstance(workflow.get("jobs"), Mapping):
        return []
    triggers = _triggers(workflow)
    jobs: Mapping[str, Any] = workflow["jobs"]
    lines = _lines(text)
    findings = []
    for name, job in jobs.items():
        if not isinstance(job, Mapping):
            continue
        line = lines.get(str(name), 1)
        if "pull_request_target" in triggers:
            for step in _head_checkouts(job, workflow.get("env")):
                findings.append(
                    Finding(
                        path,
                        line,
                        str(name),
                        "pull-request-target-head-checkout",
                        f"step {step!r} checks out the pull request's head under "
                        "pull_request_target, which runs a fork's code with this repository's "
                        "secrets, write token and runners; use on: pull_request for untrusted "
                        "code (no secrets), and run the GPU gate behind a protected environment",
                    )
                )
        # (pull_request_target without a head checkout runs the base branch's own code.)
        if "pull_request" in triggers:
            if "uses" in job:
                continue  # a reusable workflow: check that file itself
            labels, known = _labels(job)
            if not (known and not _self_hosted(labels)) and not _gated(jobs, str(name)):
                shown = ", ".join(labels) if known else str(job.get("runs-on"))
                what = "self-hosted runners" if known else "runners an expression picks"
                findings.append(
                    Finding(
                        path,
                        line,
                        str(name),
                        "self-hosted-pull-request",
                        f"runs on {what} "
                        f"({shown}) and a pull request (a fork's included) can start it with "
                        "no approval; give it (or a job it needs) a protected environment "
                        "(environment: with required reviewers), or keep forks out with "
                        "if: github.event.pull_request.head.repo.full_name == github.repository, "
                        "or run it on pushes to protected branches only",
                    )
                )
    return findings


def check_paths(paths: Iterable[Path]) -> list[Finding]:
    findings: list[Finding] = []
    for path in paths:
        try:
            text = path.read_text("utf-8")
        except (OSError, ValueError) as error:
            raise GpufitError(f"{path}: cannot read it ({error})") from None
        findings += check_workflow(text, str(path))
    return findings


def markdown_workflows(text: str) -> list[tuple[int, str]]:
    """The ```yaml blocks of a Markdown text that are whole workflows (they have ``on:``
    and ``jobs:``), each with the line it starts on."""
    out = []
    for match in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
        block = match.group(1)
        if re.search(r"^on:", block, re.M) and re.search(r"^jobs:", block, re.M):
            out.append((text.count("\n", 0, match.start(1)) + 1, block))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(
            "usage: python -m pytest_gpufit.fleet.workflow_check WORKFLOW.yml ...", file=sys.stderr
        )
        return 2
    try:
        findings = check_paths(Path(a) for a in args)
    except GpufitError as error:
        print(f"workflow_check: error: {error}", file=sys.stderr)
        return 2
    for finding in findings:
        print(finding.text())
    if not findings:
        print(f"no finding in {len(args)} file{'s' * (len(args) != 1)}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
