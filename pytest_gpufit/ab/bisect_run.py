"""``gpufit bisect`` run: the two requirement sets read, the environments built
(``bisect_envs``), the search (``bisect``) judged by ``gpufit ab`` per AB_CONTRACT (a
subprocess that writes ``--json``), and the answer printed and written as JSON."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpufit.ab.bisect import (
    FEW,
    Change,
    Finding,
    Judge,
    Judgement,
    RequirementSet,
    Step,
    applied,
    apply_changes,
    change_set,
    declared_units,
    group_units,
    judgement_from_ab,
    parse_requirements,
    plan_strategy,
    search,
    summary,
)
from pytest_gpufit.ab.bisect_envs import Builder, InstallFailed, find_uv, freeze, self_requirement
from pytest_gpufit.ab.child import GRACE_S, run_child
from pytest_gpufit.atomic import write_text_atomic
from pytest_gpufit.errors import GpufitError, Interrupted

SCHEMA = "gpufit-bisect/1"


@dataclass(frozen=True)
class Sides:
    """What the user gave for A and B."""

    a_requirements: str | None = None
    a_python: str | None = None
    b_requirements: str | None = None
    changes: tuple[str, ...] = ()


def read_sides(sides: Sides, uv: str | None) -> tuple[RequirementSet, RequirementSet]:
    if (sides.a_requirements is None) == (sides.a_python is None):
        raise GpufitError("give A once: --a-requirements FILE or --a-python PYTHON")
    if (sides.b_requirements is None) == (not sides.changes):
        raise GpufitError("give B once: --b-requirements FILE or --change NAME==VERSION ...")
    if sides.a_requirements is not None:
        a = _read(sides.a_requirements, "--a-requirements")
    else:
        assert sides.a_python is not None
        a = parse_requirements(freeze(sides.a_python, uv), f"the freeze of {sides.a_python}")
    if sides.b_requirements is not None:
        b = _read(sides.b_requirements, "--b-requirements")
    else:
        b = apply_changes(a, sides.changes, "--change")
    return a, b


def _read(path: str, option: str) -> RequirementSet:
    file = Path(path)
    if not file.is_file():
        raise GpufitError(f"{option} {path}: no such file")
    return parse_requirements(file.read_text(encoding="utf-8"), path)


def ab_judge(
    pytest_args: Sequence[str],
    folder: Path,
    rounds: int | None = None,
    tolerance: float | None = None,
) -> Judge:
    """A judge that runs ``gpufit ab ARGS --a python=A --b python=B --json PATH`` (with this
    interpreter's gpufit) and reads its JSON; its output goes to ``PATH`` with ``.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    count = [0]

    def judge(a_python: str, b_python: str) -> Judgement:
        count[0] += 1
        report = folder / f"step-{count[0]}.json"
        log = report.with_suffix(".log")
        report.unlink(missing_ok=True)  # a stale report must never be read as this step's
        command = [sys.executable, "-m", "pytest_gpufit.cli", "ab"]
        command += ["--a", f"python={a_python}", "--b", f"python={b_python}"]
        command += ["--json", str(report)]
        if rounds is not None:
            command += ["--rounds", str(rounds)]
        if tolerance is not None:
            command += ["--tolerance", f"{tolerance * 100:g}%"]
        command += ["--", *pytest_args]  # pytest's options (-k ...) too
        # a Ctrl-C reaches the step's gpufit ab as SIGINT, and it stops its own sides first
        done = run_child(command, grace_s=2 * GRACE_S)
        log.write_text(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}", encoding="utf-8")
        if done.returncode not in (0, 1) or not report.is_file():
            said = summary(done.stderr or done.stdout) or "no output"
            raise GpufitError(f"gpufit ab exited {done.returncode} (log: {log}): {said}")
        return judgement_from_ab(json.loads(report.read_text(encoding="utf-8")), str(report))

    return judge


def run_bisect(
    sides: Sides,
    *,
    pytest_args: Sequence[str] = (),
    groups: Sequence[str] = (),
    work: Path,
    find_links: Sequence[str] = (),
    no_index: bool = False,
    offline: bool = False,
    base_python: str | None = None,
    rounds: int | None = None,
    tolerance: float | None = None,
    few: int = FEW,
    json_path: str | None = None,
    judge: Judge | None = None,
    out: Callable[[str], None] | None = None,
) -> int:
    """The whole command; returns its exit code (0: no regression, 1: regression, named or
    not); bad input raises GpufitError (exit 2). Lines go to ``out`` (default: stdout, flushed
    per line: a step may take minutes, and a CI log should show each as it ends)."""
    out = out or functools.partial(print, flush=True)
    uv = find_uv()
    work = work.absolute()  # interpreters are named by absolute paths wherever ab runs them
    if json_path and not Path(json_path).absolute().parent.is_dir():
        raise GpufitError(f"--json {json_path}: no such folder {Path(json_path).parent}")
    for folder in find_links:
        if not Path(folder).is_dir():
            raise GpufitError(f"--find-links {folder}: no such folder")
    a, b = read_sides(sides, uv)
    changes = change_set(a, b)
    units = declared_units(changes, groups)
    builder = Builder(
        work=work,
        base_python=base_python or sides.a_python or sys.executable,
        uv=uv,
        find_links=tuple(str(Path(d).resolve()) for d in find_links),
        no_index=no_index,
        offline=offline,
        gpufit=tuple(self_requirement(work, uv)),
    )
    out(f"gpufit bisect: A = {a.source} ({len(a.pins)} packages), B = {b.source}")
    for note in dict.fromkeys((*a.notes, *b.notes)):
        out(f"  note: {note}")
    out(f"{len(changes)} changed: " + "; ".join(c.describe() for c in changes))
    out(f"environments: {builder.tool}, in {work / 'envs'}")

    every = frozenset(c.name for c in changes)

    shown: dict[str, str] = {}  # interpreter -> which environment, for the progress lines

    def env(names: frozenset[str]) -> str:
        label = "A" if not names else ("B" if names == every else f"A + {', '.join(sorted(names))}")
        try:
            python = builder.python(applied(a, changes, names))
        except InstallFailed as error:
            raise GpufitError(f"{label} does not install: {summary(str(error), 600)}") from None
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted while building the environment {label}; no answer, nothing "
                "written (a half-built environment is built again next time)"
            ) from None
        shown[python] = label
        return python

    env(frozenset())
    env(every)
    if len(units) > 1:
        halving = plan_strategy(len(units), few) == "halving"
        units = group_units(
            units, lambda names: builder.resolves(applied(a, changes, names)), halving
        )
    for unit in units:
        if len(unit.changes) > 1:
            out(f"  {unit.describe()}")
    judge = judge or ab_judge(pytest_args, work / "ab", rounds, tolerance)
    strategy = plan_strategy(len(units), few)
    out(
        f"search: {strategy} over {len(units)} change(s) or group(s) (one at a time up to "
        f"{few}, else halving)"
    )
    count = [0]

    def said(a_python: str, b_python: str) -> Judgement:
        try:
            judgement = judge(a_python, b_python)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted at step {count[0] + 1} ({shown.get(b_python, b_python)} against "
                "A); no answer, nothing written"
            ) from None
        count[0] += 1
        out(f"  step {count[0]}: {shown.get(b_python, b_python)} against A: {judgement.verdict}")
        for metric in judgement.metrics:
            out(f"    {metric.describe()}")
        return judgement

    finding = search(units, env, said, few)
    for line in answer(finding):
        out(line)
    if json_path:
        data = report(finding, a, b, changes, builder)
        write_text_atomic(Path(json_path), json.dumps(data, indent=2) + "\n")
    return finding.exit_code


def answer(finding: Finding) -> list[str]:
    """The steps with their labels, then the answer: the culprit, its versions and the target
    metrics' intervals with and without it."""
    lines = ["steps:"]
    for step in finding.steps:
        again = f" (the environment of {step.same_as})" if step.same_as else ""
        lines.append(f"  {step.label}: {step.judgement.verdict}{again}")
    if finding.outcome == "no-regression":
        return [*lines, f"no regression: {finding.message}"]
    if finding.outcome == "inconclusive":
        return [*lines, f"inconclusive: {finding.message}"]
    if finding.outcome == "together":
        lines.append(f"no single culprit: {finding.message}")
    for culprit in finding.culprits:
        lines.append(f"culprit: {culprit.unit.describe()}")
        lines += _intervals("with it", culprit.alone, finding)
        if culprit.without is not None:
            lines += _intervals("without it", culprit.without, finding)
        else:
            lines.append("  without it: A itself (the only change)")
    return lines


def _intervals(title: str, step: Step, finding: Finding) -> list[str]:
    targets = set(finding.targets)
    shown = [m for m in step.judgement.metrics if m.key in targets] or step.judgement.metrics
    lines = [f"  {title} ({step.label}, against A): {step.judgement.verdict}"]
    return lines + [f"    {m.describe()}" for m in shown]


def report(
    finding: Finding,
    a: RequirementSet,
    b: RequirementSet,
    changes: Sequence[Change],
    builder: Builder,
) -> dict[str, Any]:
    """The answer as JSON (schema gpufit-bisect/1; keys may be added, never renamed)."""
    return {
        "schema": SCHEMA,
        "a": {"source": a.source, "notes": list(a.notes)},
        "b": {"source": b.source, "notes": list(b.notes)},
        "tool": builder.tool,
        "changes": [c.to_dict() for c in changes],
        "units": [u.to_dict() for u in finding.units],
        "strategy": finding.strategy,
        "targets": [{"test": t, "metric": m} for t, m in finding.targets],
        "steps": [s.to_dict() for s in finding.steps],
        "outcome": finding.outcome,
        "message": finding.message,
        "culprits": [c.to_dict() for c in finding.culprits],
        "exit_code": finding.exit_code,
    }
