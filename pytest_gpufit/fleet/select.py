"""``--gpufit-runner``: a gate job keeps the items the plan assigns to its class and judges
the class's expect on the real probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fleet.plan import ItemFact, digest, make_plan
from pytest_gpufit.fleet.pool import Pool, RunnerClass, derived_expect, load_pool
from pytest_gpufit.stash import FIXTURES, PLANNING, REQUIREMENT


def item_fact(item: pytest.Item) -> ItemFact:
    """The plan's view of one item (its requirement was set by the plugin at collection)."""
    req = item.stash.get(REQUIREMENT, None)
    gated = req is not None or bool(FIXTURES.intersection(getattr(item, "fixturenames", ())))
    return ItemFact(item.nodeid, req, gated, str(Path(str(item.path)).parent))


class RunnerSelection:
    """The runner class of this gate job; registered as a plugin for its report."""

    def __init__(
        self,
        pool: Pool,
        runner: RunnerClass,
        source: str,
        plan_digest: str | None = None,
        digest_source: str = "",
    ) -> None:
        self.pool = pool
        self.runner = runner
        self.source = source  # where the class's name came from, for messages
        self.expect = derived_expect(runner)
        self.plan_digest = plan_digest  # the plan job's, to compare with this job's plan
        self.digest_source = digest_source
        self.deselected: dict[str, str] = {}  # node id -> why this class does not run it
        self.mismatch: str | None = None  # why this job's plan is not the plan job's

    @classmethod
    def from_settings(cls, rootpath: Path, settings: Any) -> RunnerSelection:
        path = Path(settings.runners)
        if not path.is_absolute():
            path = rootpath / path
        where = settings.source("runner")
        try:
            pool = load_pool(path)
        except GpufitError as error:
            raise GpufitError(f"{where}={settings.runner!r}: {error}") from None
        runner = pool.get(settings.runner, where)
        return cls(pool, runner, where, settings.plan, settings.source("plan"))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        # trylast, registered in gpufit's tryfirst pytest_configure: after every plain hook
        # (gpufit's requirements, -k, -m, --deselect), before pytest-split (plugin.py).
        self.select(config, items)

    def select(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Keep this class's items; deselect the rest (pytest's deselected, with reasons)."""
        if config.stash.get(PLANNING, False):
            return  # `gpufit plan` collects every item, for every class
        plan = make_plan(self.pool, [item_fact(item) for item in items])
        mine = plan.keeps(self.runner.name)
        if self.plan_digest is not None and digest(plan) != self.plan_digest:
            # Not an error raised here: under xdist that would crash the workers. Every item
            # this job keeps fails with the reason instead (setup_failure), so the job is red.
            self.mismatch = (
                f"gpufit: {self.digest_source}={self.plan_digest!r}: this gate job's plan "
                f"({digest(plan)!r}: {len(items)} collected item(s), {len(mine)} for class "
                f"{self.runner.name!r}) differs from the plan job's: the two collected "
                "different tests or placed them differently (an importorskip or collect_ignore "
                "that depends on the install or the machine, -k/-m/--deselect given to one "
                "only, another checkout or pool file), so a check could run in no job at all. "
                "Give `gpufit plan` the gate's test arguments and install, and compare its "
                "table here with the plan job's"
            )
        kept, dropped = [], []
        for item, placement in zip(items, plan.items, strict=True):
            if item.nodeid in mine:
                kept.append(item)
            else:
                dropped.append(item)
                self.deselected[item.nodeid] = plan.why_not(placement, self.runner.name)
        if dropped:
            items[:] = kept
            config.hook.pytest_deselected(items=dropped)

    def setup_failure(self) -> str | None:
        """Why every item of this job fails before it runs (its plan is not the plan job's)."""
        return self.mismatch

    def header(self) -> list[str]:
        return [
            f"gpufit: runner class {self.runner.name!r} of {self.pool.path} "
            f"(from {self.source}): expect {self.expect!r}"
        ]

    def summary(self, verbose: bool) -> list[str]:
        if self.mismatch:
            return [self.mismatch]
        if not self.deselected:
            return []
        counts: dict[str, int] = {}
        for why in self.deselected.values():
            counts[why] = counts.get(why, 0) + 1
        lines = [
            f"gpufit: runner class {self.runner.name!r}: {len(self.deselected)} item(s) "
            "deselected, planned for other classes (gpufit plan shows the whole plan):"
        ]
        lines += [f"  {n} x {why}" for why, n in counts.items()]
        if verbose:
            lines += [f"  deselected {nodeid}: {why}" for nodeid, why in self.deselected.items()]
        return lines

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        verbose = terminalreporter.config.get_verbosity() > 0
        for line in self.summary(verbose):
            terminalreporter.write_line(line)
