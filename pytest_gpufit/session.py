"""One object per pytest session: settings, inventory, device plan, verdicts, measurements,
model cache and baselines. The hooks in ``plugin.py`` and the suite items only ask it.

Imports only the standard library, pytest and small pure modules: no torch, no CUDA.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.expect import check_expect, parse_expect
from pytest_gpufit.hardware.nvml import free_memory
from pytest_gpufit.hardware.probe import build_inventory, visible_devices
from pytest_gpufit.hardware.records import Gpu, Inventory
from pytest_gpufit.report import (
    TestResult,
    inventory_lines,
    measurement_table,
    merge_results,
    one_line,
    result_from_report,
    summary_lines,
    write_outputs,
)
from pytest_gpufit.requirements import Requirement, Verdict, evaluate
from pytest_gpufit.settings import Settings, gate_conflicts
from pytest_gpufit.skips import (
    allowed,
    early_exit_text,
    forbidden_text,
    skip_lines,
    skip_reason,
    stopped_early,
)
from pytest_gpufit.stash import FIXTURES, PLANNING, REQUIREMENT, VERDICT, state_of
from pytest_gpufit.xdist_pinning import PLAN, pinned_to

ELSEWHERE = "gpufit_planned_elsewhere"  # xdist workeroutput: items of other runner classes


class GateFailure(GpufitError):
    """An unmet requirement under ``--gpufit-on-missing=fail``; reported as a test failure."""


@dataclasses.dataclass(frozen=True)
class SuiteSupport:
    """What the session needs from the YAML suites, given by the plugin so that the session
    never imports them: each is called only in sessions that run suite checks."""

    # A suite file -> {suite name: every "target::check" it declares}.
    checks_of: Callable[[Path], Mapping[str, list[str]]]
    new_model_cache: Callable[[], Any]  # the cache that loads each model once per session


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """What the xdist controller decided for one worker, in the controller's numbering."""

    group: tuple[int, ...]  # the controller's GPU indices this worker holds
    visible: str  # the CUDA_VISIBLE_DEVICES value the controller set in the worker
    worker: str = ""

    @classmethod
    def from_workerinput(cls, workerinput: dict[str, Any]) -> WorkerPlan | None:
        data = workerinput.get(PLAN)
        if not data or data.get("group") is None:
            return None
        return cls(tuple(data["group"]), str(data["visible"]), str(workerinput.get("workerid")))


def skip(reason: str) -> None:
    # Report the test's own location, as skip markers do, not this file's.
    raise pytest.skip.Exception(reason, _use_item_location=True)


class GpufitSession:
    """The session's facts and decisions; registered as a plugin for its report hooks."""

    def __init__(
        self, config: pytest.Config, settings: Settings, suites: SuiteSupport | None = None
    ) -> None:
        gate_conflicts(settings)
        self.config = config
        self.settings = settings
        self.suites = suites
        self.workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        # A worker takes the controller's plan as it is: --gpufit-devices was applied there,
        # in the controller's numbering, before CUDA_VISIBLE_DEVICES renumbered this worker.
        self.planned = self.workerinput is not None and PLAN in self.workerinput
        self.plan = WorkerPlan.from_workerinput(self.workerinput or {})
        self.verdicts: dict[str, Verdict] = {}
        self.measurements: dict[str, dict[str, Any]] = {}
        self.saved_runs: list[str] = []
        self.results: dict[str, TestResult] = {}
        self.output_errors: list[str] = []  # outputs that could not be written
        self.expect_failure: list[str] = []
        self.early_exit: str | None = None  # pytest.exit(returncode=0) under forbid_skips
        self.used = settings.explicit
        self.inventory_reported = False
        self.pinning: Any = None
        self._inventory: Inventory | None = None
        self._real: Inventory | None = None
        self._model_cache: Any = None
        self._baselines: Any = None
        self._served: dict[str, Any] = {}  # suite target -> its server, or why it did not start
        self.runner_selection: Any = None  # fleet.select.RunnerSelection under --gpufit-runner
        self.planned_elsewhere: set[str] = set()  # node ids an xdist worker's selection dropped

    # ---- facts, made on first use ---------------------------------------------------------

    @property
    def is_worker(self) -> bool:
        return self.workerinput is not None

    @property
    def real_inventory(self) -> Inventory:
        """What the machine has (NVML or a provider), never simulated cards."""
        if self._real is None:
            devices = None if self.planned or self.settings.simulate else self.settings.devices
            hook = self.config.hook.pytest_gpufit_probe
            self._real = self._pinned(
                self._build(None, devices, provider=lambda: hook(config=self.config))
            )
        return self._real

    @property
    def inventory(self) -> Inventory:
        """What requirements are judged against: the simulated cards, or the real ones."""
        if self._inventory is None:
            if self.settings.simulate:
                devices = None if self.planned else self.settings.devices
                self._inventory = self._pinned(self._build(self.settings.simulate, devices))
            else:
                self._inventory = self.real_inventory
        return self._inventory

    def _build(self, simulate: str | None, devices: tuple[int, ...] | None, **kw: Any) -> Inventory:
        try:
            return build_inventory(simulate, devices, what=self.settings.source("devices"), **kw)
        except GpufitError as error:
            raise pytest.UsageError(str(error)) from None

    def _pinned(self, inventory: Inventory) -> Inventory:
        return inventory if self.plan is None else pinned_to(inventory, self.plan)

    @property
    def model_cache(self) -> Any:
        """The suites' model cache: each model loaded once per session."""
        if self._model_cache is None:
            if self.suites is None:
                raise GpufitError("this session was made without suite support: no model cache")
            self._model_cache = self.suites.new_model_cache()
        return self._model_cache

    # ---- servers of served suite targets (backend: openai) -------------------------------

    def served(self, key: str, start: Callable[[], Any]) -> Any:
        """The server of suite target ``key``, started by ``start()`` on first use and kept
        until ``stop_served``; a failed start is kept too, so the target's later checks fail at
        once with the same reason instead of waiting for another start-up."""
        if key not in self._served:
            try:
                self._served[key] = start()
            except GpufitError as error:
                self._served[key] = error
        value = self._served[key]
        if isinstance(value, GpufitError):
            raise GpufitError(str(value))
        return value

    def stop_served(self, key: str | None = None) -> None:
        """Stop one target's server (``key``) or every one (None); each stops its own group."""
        for name in [key] if key is not None else list(self._served):
            value = self._served.pop(name, None)
            if value is not None and not isinstance(value, GpufitError):
                value.stop()

    @property
    def baselines(self) -> Any:
        """The BaselineSession, made on first use."""
        if self._baselines is None:
            # late: only sessions with baselines read the store
            from pytest_gpufit.baseline import BaselineSession, Store

            store = Store(self.config.rootpath / self.settings.baseline_dir)
            inventory = self.inventory
            self._baselines = BaselineSession(
                store,
                inventory.environment,
                inventory.gpus,
                self.config.rootpath,
                host=self.settings.host,
                fleet_tolerance=self.settings.fleet_tolerance,
                fleet_strict=self.settings.fail_on_missing,
                links=inventory.links,
            )
        return self._baselines

    # ---- the runner expectation -----------------------------------------------------------

    def check_expect(self) -> list[str]:
        """Failed ``--gpufit-expect`` lines (empty when it holds), judged on the real GPUs.

        Only the controller judges: an xdist worker holds a part of the machine.
        """
        if not self.settings.expect or self.is_worker:
            return []
        expect = self.settings.expect
        where = self.settings.source("expect")
        inventory = self.real_inventory
        try:
            failed = check_expect(parse_expect(expect, where), inventory)
        except GpufitError as error:
            raise pytest.UsageError(str(error)) from None
        if not failed:
            return []
        lines = [f"gpufit: this runner does not match {where}={expect!r}:"]
        lines += [f"  - {f}" for f in failed]
        lines.append(
            "  this machine has: " + "; ".join(x.strip() for x in inventory_lines(inventory))
        )
        self.expect_failure = lines
        return lines

    def check_runner_expect(self) -> list[str]:
        """Failed clauses of the ``--gpufit-runner`` class's expect, judged on the real GPUs
        like ``--gpufit-expect`` (both must hold). Not under simulation: it plans, never gates.
        """
        selection = self.runner_selection
        if selection is None or self.is_worker or self.settings.simulate:
            return []
        where = f"runner class {selection.runner.name!r} ({selection.pool.path})"
        inventory = self.real_inventory
        failed = check_expect(parse_expect(selection.expect, where), inventory)
        if not failed:
            return []
        lines = [f"gpufit: this runner does not match the expect of {where}: {selection.expect!r}:"]
        lines += [f"  - {f}" for f in failed]
        lines.append(
            "  this machine has: " + "; ".join(x.strip() for x in inventory_lines(inventory))
        )
        self.expect_failure = self.expect_failure + lines
        return lines

    # ---- judging and placing items --------------------------------------------------------

    def setup(self, item: pytest.Item, req: Requirement | None) -> None:
        """Judge an item before it runs: skip, fail (the fail policy) or let it run."""
        if req is None:
            return
        verdict = self.judge(item, req)
        if not verdict.ok:
            self.gate(verdict.reason)
        elif verdict.simulated and not getattr(item, "gpufit_simulation_safe", False):
            skip(f"simulated: would run on {verdict.reason}")

    def judge(self, item: pytest.Item, req: Requirement) -> Verdict:
        """The item's verdict, kept as an object on the item and in the session."""
        self.used = True
        inventory = self.inventory
        if req.vram_free and not inventory.simulated:
            inventory = _with_free_memory_now(inventory)
        try:
            verdict = evaluate(req, inventory, _fit_judge(req, item))
        except GpufitError as error:
            raise GateFailure(f"gpufit: {error}") from None
        item.stash[VERDICT] = verdict
        self.verdicts[item.nodeid] = verdict
        # JUnit properties, for people; devices in the controller's numbering.
        item.user_properties.append(("gpufit_ok", str(verdict.ok).lower()))
        item.user_properties.append(("gpufit_reason", verdict.reason))
        shown = self.outer_indices(verdict.devices)
        item.user_properties.append(("gpufit_devices", ",".join(map(str, shown))))
        return verdict

    def gate(self, reason: str) -> None:
        """Skip, or fail under the fail policy, with ``reason``."""
        if self.settings.fail_on_missing:
            raise GateFailure(reason)
        skip(reason)

    def forbid_skip(
        self, report: pytest.TestReport | pytest.CollectReport, raised_xfail: bool = False
    ) -> None:
        """Under ``--gpufit-forbid-skips`` a skip the allow-list does not accept becomes a
        failure that names its reason: a test's (a set-up skip fails the test, as an unmet
        gate does) or a collector's (``importorskip`` in a module: a collection error).

        An xfail whose test ran is not a skip; one raised by ``pytest.xfail()`` or an
        ``xfail(run=False)`` mark (``raised_xfail``) stopped the test where a skip would, and
        is. ``gpufit plan`` only collects.
        """
        if not (self.settings.forbid_skips and report.skipped):
            return
        if self.config.stash.get(PLANNING, False):
            return
        wasxfail = getattr(report, "wasxfail", None)
        if wasxfail is not None:
            stopped = stopped_early(str(wasxfail), raised_xfail)
            if stopped is None:
                return
            reason = stopped
        else:
            reason = skip_reason(report.longrepr)
        if allowed(reason, self.settings.allow_skip):
            return
        report.outcome = "failed"
        report.longrepr = forbidden_text(reason, self.settings.source("forbid_skips"))
        if wasxfail is not None:
            del report.wasxfail  # a failure now, not an xfail
        if isinstance(report, pytest.TestReport) and report.when == "setup":
            report.when = "call"  # the test failed, like a gate; not an error in a fixture

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """``pytest.exit(msg, returncode=0)`` (a conftest that stops the run when vllm is
        missing) ends a session green with the rest of its tests never run: under
        ``--gpufit-forbid-skips`` that is a skip of them all, and fails (``pytest_sessionfinish``).
        """
        stop = excinfo.value
        if not (self.settings.forbid_skips and isinstance(stop, pytest.exit.Exception)):
            return
        if stop.returncode == 0 and not self.config.stash.get(PLANNING, False):
            self.early_exit = str(stop.msg)

    @staticmethod
    def verdict_of(item: pytest.Item) -> Verdict | None:
        return item.stash.get(VERDICT, None)

    def outer_indices(self, devices: tuple[int, ...]) -> tuple[int, ...]:
        """A worker's GPU indices in the controller's numbering (the same without xdist)."""
        group = self.plan.group if self.plan else ()
        return tuple(group[d] if d < len(group) else d for d in devices)

    def device_for(self, item: Any) -> Gpu | None:
        """The GPU a suite target runs on: the one its verdict judged (None for the CPU)."""
        device: str = item.target.device
        if not device.startswith("cuda"):
            return None
        by_index = {g.index: g for g in self.inventory.gpus}
        verdict = self.verdict_of(item)
        judged = verdict.devices if verdict is not None else ()
        index_text = device.partition(":")[2]
        if not index_text:
            index = judged[0] if judged else 0
        else:
            index = int(index_text)
            if judged and index not in judged:
                names = ", ".join(by_index[i].label for i in judged if i in by_index)
                self.gate(
                    f"target device {device}: GPU{index} does not meet the requirement "
                    f"(met by {names}); use device: cuda to run on a GPU that does"
                )
        if index not in by_index:
            raise GpufitError(f"target device {device}: no GPU{index} on this machine")
        return by_index[index]

    def placement(self, item: Any) -> tuple[Any, Gpu | None]:
        """(the target bound to the judged GPU, that GPU): ``device: cuda`` becomes ``cuda:N``."""
        gpu = self.device_for(item)
        target = item.target
        if gpu is not None and target.device != f"cuda:{gpu.index}":
            target = dataclasses.replace(target, device=f"cuda:{gpu.index}")
        return target, gpu

    def cuda_visible_devices(self, verdict: Verdict) -> str:
        """``CUDA_VISIBLE_DEVICES`` for a process launched on the verdict's GPUs.

        Entries of this process's own ``CUDA_VISIBLE_DEVICES`` where it is set (so the child
        reads them in the same numbering), else GPU UUIDs, else indices.
        """
        return visible_devices(
            self.inventory.gpus, verdict.devices, os.environ.get("CUDA_VISIBLE_DEVICES")
        )

    # ---- collecting results (from this process or from xdist workers) --------------------

    def note_items(self, items: list[pytest.Item]) -> None:
        """After collection: does this session use gpufit at all?"""
        if any(uses_gpufit(item) for item in items):
            self.used = True

    @staticmethod
    def uses_gpufit(item: pytest.Item) -> bool:
        return uses_gpufit(item)

    def annotate(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """What the controller needs from a worker's report, as plain data on the report."""
        if not self.uses_gpufit(item):
            return
        report.gpufit_used = True  # type: ignore[attr-defined]
        verdict = self.verdict_of(item)
        if verdict is not None:
            data = verdict.to_dict()
            data["devices"] = list(self.outer_indices(verdict.devices))
            report.gpufit_verdict = data  # type: ignore[attr-defined]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if getattr(report, "gpufit_used", False):
            self.used = True
        props = dict(report.user_properties)
        if "gpufit_measurement" in props and report.when == "call":
            entry = json.loads(str(props["gpufit_measurement"]))
            self.measurements[report.nodeid] = dict(entry, outcome=report.outcome)
        result = result_from_report(report)
        if result is not None:
            self.results[report.nodeid] = merge_results(self.results.get(report.nodeid), result)
        data = getattr(report, "gpufit_verdict", None)
        if data is not None and report.nodeid not in self.verdicts:  # from an xdist worker
            self.verdicts[report.nodeid] = Verdict(
                ok=bool(data["ok"]),
                reason=str(data["reason"]),
                devices=tuple(int(d) for d in data["devices"]),
                simulated=bool(data["simulated"]),
            )

    # ---- reporting ------------------------------------------------------------------------

    def inventory_header(self) -> list[str]:
        self.inventory_reported = True
        return ["gpufit: " + line for line in inventory_lines(self.inventory)]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.output_errors:
            terminalreporter.write_line(line, red=True, bold=True)
        if self.verdicts:
            for line in summary_lines(self.inventory, self.verdicts):
                terminalreporter.write_line(line)
        if self.used:
            for line in self._skip_lines():
                terminalreporter.write_line(line)
        for line in self.saved_runs:
            terminalreporter.write_line(line)
        if self.pinning is not None:
            for line in self.pinning.summary():
                terminalreporter.write_line(line)
        if self.measurements:
            terminalreporter.section("gpufit suite results")
            for line in measurement_table(self.measurements):
                terminalreporter.write_line(line)

    def _skip_lines(self) -> list[str]:
        """Every skip of the session, one line per reason; a skip that a verdict line above
        already explains (an unmet requirement, a simulated run) is left out, and an xfail is
        no skip."""
        skipped = {
            r.nodeid: r.reason
            for r in self.results.values()
            # report.py counts an xfail as a skip; it ran, and pytest counts it on its own
            if r.outcome == "skipped" and not r.reason.startswith("xfail: ")
        }
        explained = {
            nodeid: (
                one_line(verdict.reason),
                one_line(f"simulated: would run on {verdict.reason}"),
            )
            for nodeid, verdict in self.verdicts.items()
        }
        return skip_lines(skipped, explained)

    def _elsewhere(self) -> set[str]:
        """Node ids the runner-pool plan gives to other runner classes (``--gpufit-runner``):
        they run on other cards, into those cards' baselines, never here."""
        selection = self.runner_selection
        return set(selection.deselected if selection is not None else ()) | self.planned_elsewhere

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist: a worker selected the items (the controller collects none); keep what its
        runner selection left to other classes."""
        output = getattr(node, "workeroutput", None) or {}
        self.planned_elsewhere.update(output.get(ELSEWHERE, ()))

    def _suite_checks(self) -> dict[str, set[str]]:
        """Every check node id of each suite that measured something, read from its file,
        except those the runner-pool plan runs on other classes: a run of this class's part
        of a suite is the whole suite on this card."""
        expected: dict[str, set[str]] = {}
        if self.suites is None:
            return expected
        elsewhere = self._elsewhere()
        for file in sorted({nodeid.split("::")[0] for nodeid in self.measurements}):
            try:
                declared = self.suites.checks_of(self.config.rootpath / file)
            except (GpufitError, OSError):
                continue  # changed since collection: nothing is known to be missing
            for name, checks in declared.items():
                ids = {f"{file}::{check}" for check in checks}
                expected.setdefault(name, set()).update(ids - elsewhere)
        return expected

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.stop_served()  # also after a failure, -x or Ctrl-C: nothing is left running
        if self._model_cache is not None:
            self._model_cache.clear()
        if self.is_worker:
            workeroutput = getattr(self.config, "workeroutput", None)
            if workeroutput is not None and self.runner_selection is not None:
                workeroutput[ELSEWHERE] = sorted(self.runner_selection.deselected)
            return  # the controller merges every worker's results and writes once
        if self.early_exit is not None:
            where = self.settings.source("forbid_skips")
            self.output_errors.append(early_exit_text(self.early_exit, where))
        if self.settings.baseline != "off" and self.measurements:
            try:
                saved = self.baselines.save(
                    self.measurements, self.settings.baseline == "save", self._suite_checks()
                )
            except GpufitError as error:
                self.output_errors.append(f"gpufit baseline: {error}")
            else:
                self.saved_runs.extend(run.message for run in saved)
        # The CI job page gets a section only from sessions that used gpufit.
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY") if self.used else None
        if self.settings.report or self.settings.summary or step_summary:
            # Write whatever can be written, then fail the run naming what could not be.
            self.output_errors += write_outputs(
                self.inventory,
                self.verdicts,
                self.measurements,
                list(self.results.values()),
                report_path=self.settings.report,
                summary_path=self.settings.summary,
                step_summary=step_summary,
            )
        if self.output_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def uses_gpufit(item: pytest.Item) -> bool:
    """Whether an item uses gpufit: a gpufit mark (or a verdict), a gpufit fixture, or its own
    ``gpufit_requirement`` (a suite check declares one, even when it is None)."""
    return (
        item.stash.get(REQUIREMENT, None) is not None
        or VERDICT in item.stash
        or hasattr(item, "gpufit_requirement")
        or bool(FIXTURES.intersection(getattr(item, "fixturenames", ())))
    )


def placement(item: Any) -> tuple[Any, Gpu | None]:
    """A suite item's target bound to its judged GPU, and that GPU (see GpufitSession)."""
    return state_of(item.config).placement(item)


def device_for(item: Any) -> Gpu | None:
    return state_of(item.config).device_for(item)


def _fit_judge(req: Requirement, item: pytest.Item) -> Any:
    if not req.fits:
        return None
    from pytest_gpufit.fit.requires import fit_judge  # late: only tests with requires_fit pay

    return fit_judge(base=Path(str(item.path)).parent)


def _with_free_memory_now(inventory: Inventory) -> Inventory:
    free = free_memory([g.uuid for g in inventory.gpus])
    gpus = tuple(
        dataclasses.replace(g, memory_free_bytes=free.get(g.uuid or "", g.memory_free_bytes))
        for g in inventory.gpus
    )
    return dataclasses.replace(inventory, gpus=gpus)
