"""Assign every collected item to the runner classes that can run it, by simulation.

Pure decisions on plain facts: ``gpufit plan`` prints them, and a gate job started with
``--gpufit-runner`` keeps the items assigned to its class (``select``). Both call ``make_plan``
on the same facts, so the matrix and the jobs cannot disagree.

Placement:
- a gated item (a gpufit marker, a suite check on a GPU, or a ``gpu`` fixture) runs on every
  class that can run it (``placement: every``: one gate per card model), or on the first one
  (``placement: one``);
- an ungated item (no GPU requirement at all) runs once: on the pool's first CPU class
  (``gpus: none``), else on the first class; it does not depend on the card, and running it N
  times would only cost runner time;
- an orphaned gate (no class can run it) is an error of the plan; a gate job keeps it on the
  first class with GPUs, where ``--gpufit-on-missing=fail`` fails it with its reason: no item
  is ever dropped by every class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fleet.pool import Pool, RunnerClass, derived_expect
from pytest_gpufit.hardware.catalog import catalog_gpu, simulated_links
from pytest_gpufit.hardware.records import Environment, Inventory
from pytest_gpufit.requirements import Requirement, Verdict, evaluate


@dataclass(frozen=True)
class ItemFact:
    """What the plan needs to know of one collected item."""

    nodeid: str
    requirement: Requirement | None  # None: no gpufit marker
    gated: bool  # needs a GPU: a requirement, or a gpu fixture
    base: str = ""  # the item's folder, where requires_fit finds model paths


@dataclass(frozen=True)
class Placement:
    """Where one item runs, and why each other class cannot run it."""

    nodeid: str
    gated: bool
    runners: tuple[str, ...]  # the classes that run it (empty: orphaned gate)
    cannot: tuple[tuple[str, str], ...] = ()  # (class, why not)
    eligible: tuple[str, ...] = ()  # every class that could run it

    @property
    def orphaned(self) -> bool:
        return self.gated and not self.runners


@dataclass(frozen=True)
class Plan:
    pool: Pool
    items: tuple[Placement, ...]

    @property
    def orphans(self) -> tuple[Placement, ...]:
        return tuple(p for p in self.items if p.orphaned)

    def keeps(self, runner: str) -> set[str]:
        """Node ids a gate job of ``runner`` keeps: its own, and orphans on the first class
        with GPUs."""
        home = self.pool.orphan_home.name
        return {
            p.nodeid for p in self.items if runner in p.runners or (p.orphaned and runner == home)
        }

    def shards(self, runner: RunnerClass) -> int:
        """Jobs the class's items are split into: its ``shards``, but never more than it has
        items (pytest exits 5, a failed job, on a shard with nothing to run)."""
        return min(runner.shards, len(self.keeps(runner.name)))

    def why_not(self, placement: Placement, runner: str) -> str:
        """Why a gate job of ``runner`` deselects an item."""
        if not placement.gated:
            return f"ungated: runs once, on {ungated_words(self.pool)}"
        if placement.orphaned:
            home = self.pool.orphan_home
            which = "first class" if home is self.pool.runners[0] else "first GPU class"
            return f"orphaned gate: no class can run it; kept on the {which} {home.name!r}"
        if runner in placement.eligible:
            return f"placement one: runs on {placement.runners[0]!r}, the first class that can"
        reason = dict(placement.cannot).get(runner, "")
        where = ", ".join(placement.runners)
        return f"planned for {where}; this class cannot run it: {reason}"


def ungated_words(pool: Pool) -> str:
    """Where the items that need no GPU run, in words."""
    home = pool.ungated_home
    if not home.has_gpus:
        return f"the CPU class {home.name!r}"
    return f"the first class {home.name!r}"


def class_inventory(runner: RunnerClass) -> Inventory:
    """The class's cards from the catalog, with the lowest driver it promises."""
    gpus = tuple(catalog_gpu(card, i) for i, card in enumerate(runner.card_ids))
    return Inventory(
        gpus=gpus,
        environment=Environment(driver_version=runner.driver_floor),
        source="simulated",
        reason=None if gpus else "a CPU class (gpus: none)",
        links=simulated_links(gpus),  # requires_p2p judged as --gpufit-simulate judges it
    )


Judge = Callable[[Requirement, RunnerClass, str], Verdict]


def simulation_judge() -> Judge:
    """``evaluate`` against each class's simulated cards, cached per (requirement, class).

    torch is left out: the gate job installs its own, the class does not say which.
    """
    inventories: dict[str, Inventory] = {}
    verdicts: dict[tuple[Any, ...], Verdict] = {}

    def judge(req: Requirement, runner: RunnerClass, base: str) -> Verdict:
        key = (req, runner.name, base if req.fits else "")
        if key not in verdicts:
            if runner.name not in inventories:
                inventories[runner.name] = class_inventory(runner)
            fit = None
            if req.fits:
                from pytest_gpufit.fit.requires import fit_judge  # late: only requires_fit pays

                fit = fit_judge(base=Path(base) if base else None)
            planned = dataclasses.replace(req, torch=None)
            try:
                verdicts[key] = evaluate(planned, inventories[runner.name], fit)
            except GpufitError as error:
                verdicts[key] = Verdict(False, str(error), simulated=True)
        return verdicts[key]

    return judge


def make_plan(pool: Pool, items: Iterable[ItemFact], judge: Judge | None = None) -> Plan:
    """Place every item on the pool's classes (see the module's docstring)."""
    judge = judge or simulation_judge()
    home = pool.ungated_home.name
    placed = []
    for item in items:
        if not item.gated:
            placed.append(Placement(item.nodeid, False, (home,)))
            continue
        req = item.requirement or Requirement()  # a gpu fixture alone: one GPU
        eligible, cannot = [], []
        for runner in pool.runners:
            verdict = judge(req, runner, item.base)
            if verdict.ok:
                eligible.append(runner.name)
            else:
                cannot.append((runner.name, verdict.reason))
        runners = eligible if pool.placement == "every" else eligible[:1]
        placed.append(Placement(item.nodeid, True, tuple(runners), tuple(cannot), tuple(eligible)))
    return Plan(pool, tuple(placed))


# ---- output --------------------------------------------------------------------------------


def digest(plan: Plan) -> str:
    """A short hash of where every item runs and of each class's job count.

    The plan job and the gate jobs collect separately (another install, another environment):
    an item the plan job never saw (an ``importorskip``, a ``collect_ignore``, a ``-k``) may be
    placed by a gate job on a class that got no job, and so run nowhere while every job is
    green. A gate job compares its own plan's digest with the plan job's (``--gpufit-plan``).
    """
    placed = sorted((p.nodeid, p.gated, p.runners) for p in plan.items)
    jobs = [(r.name, plan.shards(r)) for r in plan.pool.runners]
    text = json.dumps([plan.pool.placement, jobs, placed], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def matrix(plan: Plan) -> dict[str, Any]:
    """``strategy.matrix`` for the gate jobs: one entry per class and shard; a class the plan
    gives nothing has no job (``idle_lines`` says so). ``plan`` is the plan's ``digest``, for
    the gate job's ``--gpufit-plan``; ``gpus`` is the class's as written (``none`` for a CPU
    class, whose job installs no CUDA build)."""
    plan_digest = digest(plan)
    include = [
        {
            "runner": runner.name,
            "labels": list(runner.labels),
            "gpus": runner.gpus,
            "shard": shard,
            "shards": plan.shards(runner),
            "expect": derived_expect(runner),
            "plan": plan_digest,
        }
        for runner in plan.pool.runners
        for shard in range(1, plan.shards(runner) + 1)
    ]
    return {"include": include}


def idle_lines(plan: Plan) -> list[str]:
    """Classes with fewer items than shards, or none at all."""
    lines = []
    for runner in plan.pool.runners:
        used = plan.shards(runner)
        if used == 0:
            lines.append(f"gpufit plan: class {runner.name!r} gets no item: no job for it")
        elif used < runner.shards:
            lines.append(
                f"gpufit plan: class {runner.name!r} has {used} item(s): {used} shard(s), "
                f"not {runner.shards}"
            )
    return lines


# GitHub Actions: "A matrix can generate a maximum of 256 jobs per workflow run."
MAX_MATRIX_JOBS = 256


def matrix_json(plan: Plan) -> str:
    """One line of JSON, as ``$GITHUB_OUTPUT`` wants it; more jobs than GitHub runs is an error
    here rather than a workflow that fails after the plan said yes."""
    data = matrix(plan)
    jobs = len(data["include"])
    if jobs > MAX_MATRIX_JOBS:
        raise GpufitError(
            f"the plan needs {jobs} gate jobs; a GitHub Actions matrix runs at most "
            f"{MAX_MATRIX_JOBS}: lower `shards:` in the pool file"
        )
    return json.dumps(data, separators=(",", ":"))


def orphan_lines(plan: Plan) -> list[str]:
    orphans = plan.orphans
    if not orphans:
        return []
    lines = [
        f"gpufit plan: {len(orphans)} orphaned gate(s): no runner class in {plan.pool.path} "
        "can run them, so they would never run anywhere; add a class that can, or change "
        "the requirement:"
    ]
    for p in orphans:
        lines.append(f"  {p.nodeid}")
        lines += [f"    {name}: {why}" for name, why in p.cannot]
    return lines


def table_lines(plan: Plan, shown: int = 10) -> list[str]:
    """Class x items, and why each class cannot run the rest (``shown`` ids per reason)."""
    pool = plan.pool
    gated = sum(p.gated for p in plan.items)
    lines = [
        f"runner pool {pool.path} (placement {pool.placement}): {len(pool.runners)} "
        f"class(es), {len(plan.items)} items ({gated} gated, {len(plan.items) - gated} ungated)"
    ]
    rows = [["class", "gpus", "driver", "shards", "runs", "gated", "ungated", "cannot run"]]
    for runner in pool.runners:
        mine = [p for p in plan.items if runner.name in p.runners]
        cannot = sum(1 for p in plan.items if runner.name in dict(p.cannot))
        rows.append(
            [
                runner.name,
                runner.gpus,
                runner.driver or "-",
                str(plan.shards(runner)),
                str(len(mine)),
                str(sum(p.gated for p in mine)),
                str(sum(not p.gated for p in mine)),
                str(cannot),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    ungated = len(plan.items) - gated
    if ungated:
        where = ungated_words(pool)
        if pool.ungated_home.has_gpus:
            where += " (no CPU class in the pool: add one with gpus: none to keep them off it)"
        lines.append(f"ungated: {ungated} item(s) need no GPU and run once, on {where}")
    for runner in pool.runners:
        by_reason: dict[str, list[str]] = {}
        for p in plan.items:
            why = dict(p.cannot).get(runner.name)
            if why is not None:
                by_reason.setdefault(why, []).append(p.nodeid)
        if not by_reason:
            continue
        lines.append(f"{runner.name} cannot run:")
        for why, ids in by_reason.items():
            lines.append(f"  {len(ids)} item(s): {why}")
            lines += [f"    {nodeid}" for nodeid in ids[:shown]]
            if len(ids) > shown:
                lines.append(f"    ... and {len(ids) - shown} more")
    return lines
