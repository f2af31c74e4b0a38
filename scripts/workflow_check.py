#!/usr/bin/env python3
"""The one fork check zizmor does not make: a self-hosted runner a pull request can reach.

A job on a self-hosted runner that a ``pull_request`` (a fork's included) can start, with no
approval in between, runs a fork's code on the machine, which keeps what it leaves behind for
the next job and sits in your network. The safe pattern: the gate on pushes to protected
branches, and on pull requests only in a job behind a protected environment (required
reviewers), or one its ``if:`` keeps from forks.

zizmor (``zizmor --offline .github/workflows action.yml``, run by ``.ci/run``) checks the rest:
``dangerous-triggers`` flags every ``pull_request_target`` and ``workflow_run`` (which this
file used to flag only with a checkout of the pull request's head), template injection,
credentials persisted by checkout, broad permissions and unpinned actions. Its
``self-hosted-runner`` audit (``--persona auditor``) flags any job with a literal
``self-hosted`` label, whatever the trigger or the approval; it does not see a runner group, a
self-hosted runner's own label (``ubuntu-h100``), labels from a matrix, or an
``environment:``. That is what this file checks.

A development check of workflow files, outside the installed package: ``.ci/run``, CI and
``tests/test_workflow_security.py`` run it. Usage (exit 1 on a finding, 2 on a file that cannot
be read)::

    python scripts/workflow_check.py .github/workflows/*.yml

Only what a workflow file says is checked: whether an environment really has required
reviewers is a repository setting, checked in its settings.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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


class WorkflowError(Exception):
    """A file that cannot be read, or is not YAML: one message naming the file and line."""


@dataclass(frozen=True)
class Finding:
    """One way untrusted code can reach a runner, at a file, line and job."""

    path: str
    line: int
    job: str
    rule: str  # self-hosted-pull-request
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


def check_workflow(text: str, path: str) -> list[Finding]:
    """Findings of one workflow file's text; a file that is not YAML is one WorkflowError."""
    try:
        workflow = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(error, "problem", None) or type(error).__name__
        raise WorkflowError(f"{where}: not a YAML workflow ({problem})") from None
    if not isinstance(workflow, Mapping) or not isinstance(workflow.get("jobs"), Mapping):
        return []
    if "pull_request" not in _triggers(workflow):
        return []
    jobs: Mapping[str, Any] = workflow["jobs"]
    lines = _lines(text)
    findings = []
    for name, job in jobs.items():
        if not isinstance(job, Mapping) or "uses" in job:
            continue  # "uses": a reusable workflow: check that file itself
        labels, known = _labels(job)
        if (known and not _self_hosted(labels)) or _gated(jobs, str(name)):
            continue
        shown = ", ".join(labels) if known else str(job.get("runs-on"))
        what = "self-hosted runners" if known else "runners an expression picks"
        findings.append(
            Finding(
                path,
                lines.get(str(name), 1),
                str(name),
                "self-hosted-pull-request",
                f"runs on {what} ({shown}) and a pull request (a fork's included) can start "
                "it with no approval; give it (or a job it needs) a protected environment "
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
            raise WorkflowError(f"{path}: cannot read it ({error})") from None
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
        print("usage: python scripts/workflow_check.py WORKFLOW.yml ...", file=sys.stderr)
        return 2
    try:
        findings = check_paths(Path(a) for a in args)
    except WorkflowError as error:
        print(f"workflow_check: error: {error}", file=sys.stderr)
        return 2
    for finding in findings:
        print(finding.text())
    if not findings:
        print(f"no finding in {len(args)} file{'s' * (len(args) != 1)}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
