"""pytest hooks and fixtures of pytest-gpufit. Thin: the decisions live in the layers below.

Imports only the standard library, pytest and small pure modules: no torch, no CUDA.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit import hookspec
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.expect import check_expect, parse_expect
from pytest_gpufit.hardware.catalog import parse_setup
from pytest_gpufit.hardware.probe import build_inventory
from pytest_gpufit.hardware.records import Environment, Gpu, Inventory
from pytest_gpufit.markers import (
    BY_NAME,
    check_fit_models,
    marker_lines,
    registered_names,
    requirement_from_marker,
    typo_error,
)
from pytest_gpufit.report import inventory_lines, summary_lines, write_report
from pytest_gpufit.requirements import Requirement, Verdict, evaluate
from pytest_gpufit.settings import OPTIONS, Settings, resolve
from pytest_gpufit.suites import is_suite_file


class GateFailure(Exception):
    """An unmet requirement under ``--gpufit-on-missing=fail``; reported as a test failure."""


class SessionState:
    """The one piece of session state: settings, the lazily probed inventory, verdicts seen."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self._inventory: Inventory | None = None
        self._model_cache: Any = None
        self._baselines: Any = None
        self.verdicts: dict[str, Verdict] = {}
        self.measurements: dict[str, dict[str, Any]] = {}
        self.saved_runs: list[str] = []
        self.pinning: Any = None

    @property
    def baselines(self) -> Any:
        """The BaselineSession, made on first use."""
        if self._baselines is None:
            from pytest_gpufit.baseline import BaselineSession, Store

            store = Store(self.config.rootpath / self.settings.baseline_dir)
            inventory = self.inventory
            self._baselines = BaselineSession(
                store, inventory.environment, inventory.gpus, self.config.rootpath
            )
        return self._baselines

    @property
    def model_cache(self) -> Any:
        if self._model_cache is None:
            from pytest_gpufit.suites.runtime import ModelCache

            self._model_cache = ModelCache()
        return self._model_cache

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            hook = self.config.hook.pytest_gpufit_probe
            try:
                inventory = build_inventory(
                    self.settings.simulate,
                    self.settings.devices,
                    provider=lambda: hook(config=self.config),
                )
            except GpufitError as error:
                raise pytest.UsageError(str(error)) from None
            worker = getattr(self.config, "workerinput", {})
            if "gpufit_group" in worker:
                from pytest_gpufit.xdist_pinning import pinned_to

                inventory = pinned_to(inventory, worker)
            self._inventory = inventory
        return self._inventory

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect verdicts from reports, so xdist workers' verdicts reach the controller."""
        props = dict(report.user_properties)
        if "gpufit_measurement" in props and report.when == "call":
            entry = json.loads(str(props["gpufit_measurement"]))
            self.measurements[report.nodeid] = dict(entry, outcome=report.outcome)
        if "gpufit_ok" not in props or report.nodeid in self.verdicts:
            return
        devices = tuple(int(d) for d in str(props.get("gpufit_devices", "")).split(",") if d)
        self.verdicts[report.nodeid] = Verdict(
            ok=props["gpufit_ok"] == "true",
            reason=str(props.get("gpufit_reason", "")),
            devices=devices,
            simulated=self.settings.simulate is not None,
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in summary_lines(self.inventory, self.verdicts):
            terminalreporter.write_line(line)
        for line in self.saved_runs:
            terminalreporter.write_line(line)
        if self.pinning is not None:
            for line in self.pinning.summary():
                terminalreporter.write_line(line)
        if self.measurements:
            from pytest_gpufit.report import measurement_table

            terminalreporter.section("gpufit suite results")
            for line in measurement_table(self.measurements):
                terminalreporter.write_line(line)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self._model_cache is not None:
            self._model_cache.clear()
        if hasattr(self.config, "workerinput"):
            return  # the controller merges every worker's results and writes once
        if self.settings.baseline != "off" and self.measurements:
            try:
                saved = self.baselines.save(self.measurements, self.settings.baseline == "save")
            except GpufitError as error:
                raise pytest.UsageError(f"gpufit baseline: {error}") from None
            for gpu_name, run_id, count in saved:
                accepted = " and accepted" if self.settings.baseline == "save" else ""
                self.saved_runs.append(
                    f"gpufit: baseline run {run_id} ({count} checks) saved{accepted} for {gpu_name}"
                )
        if self.settings.report:
            write_report(
                Path(self.settings.report), self.inventory, self.verdicts, self.measurements
            )
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if self.settings.summary or step_summary:
            from pytest_gpufit.report import write_markdown_summary

            write_markdown_summary(
                self.inventory,
                self.verdicts,
                self.measurements,
                self.settings.summary,
                step_summary,
            )


STATE = pytest.StashKey[SessionState]()
REQUIREMENT = pytest.StashKey["Requirement | None"]()
VERDICT = pytest.StashKey[Verdict]()


def state_of(config: pytest.Config) -> SessionState:
    return config.stash[STATE]


# ---- configuration ------------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpufit", "GPU gating (pytest-gpufit)")
    for option in OPTIONS:
        extra = f" (ini {option.ini}, env {option.env})"
        group.addoption(
            option.flag,
            dest="gpufit_" + option.name,
            default=None,
            choices=option.choices or None,
            help=option.help + extra,
        )
        parser.addini(option.ini, option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    for line in marker_lines():
        config.addinivalue_line("markers", line)
    try:
        settings = _resolve_settings(config)
        if settings.simulate:
            parse_setup(settings.simulate)
        if settings.expect:
            parse_expect(settings.expect)
        if settings.baseline != "off":
            from pytest_gpufit.baseline import Store

            Store(config.rootpath / settings.baseline_dir)
    except GpufitError as error:
        raise pytest.UsageError(str(error)) from None
    state = SessionState(config, settings)
    config.stash[STATE] = state
    config.pluginmanager.register(state, "gpufit-state")
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        from pytest_gpufit.xdist_pinning import XdistPinning

        state.pinning = XdistPinning(state)
        config.pluginmanager.register(state.pinning, "gpufit-xdist-pinning")


def _resolve_settings(config: pytest.Config) -> Settings:
    return resolve(lambda name: config.getoption("gpufit_" + name), lambda key: config.getini(key))


def pytest_sessionstart(session: pytest.Session) -> None:
    state = state_of(session.config)
    if not state.settings.expect:
        return
    inventory = state.inventory
    failed = check_expect(parse_expect(state.settings.expect), inventory)
    if failed:
        lines = [f"gpufit: this runner does not match --gpufit-expect={state.settings.expect!r}:"]
        lines += [f"  - {f}" for f in failed]
        lines.append("  this machine has: " + "; ".join(inventory_lines(inventory)))
        pytest.exit("\n".join(lines), returncode=pytest.ExitCode.TESTS_FAILED)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return ["gpufit: " + line for line in inventory_lines(state_of(config).inventory)]


# ---- collection ---------------------------------------------------------------------------


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_suite_file(file_path):
        from pytest_gpufit.suites.items import SuiteFile  # late: only sessions with suites

        return SuiteFile.from_parent(parent, path=file_path)
    return None


@functools.lru_cache(maxsize=4096)
def _parse_cached(
    name: str, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...]
) -> Requirement:
    return requirement_from_marker(name, args, dict(kwargs))


def _parse_marker(mark: pytest.Mark) -> Requirement:
    """Suites of thousands of tests repeat a handful of markers: parse each once."""
    try:
        return _parse_cached(mark.name, mark.args, tuple(sorted(mark.kwargs.items())))
    except TypeError:  # an unhashable argument: parse without the cache
        return requirement_from_marker(mark.name, mark.args, mark.kwargs)


def item_requirement(
    item: pytest.Item, registered: frozenset[str] | None = None
) -> Requirement | None:
    """All gpufit markers of an item, merged; None when it has none.

    A mark that looks like a misspelled gpufit marker and is not registered is an error, and
    ``requires_fit`` models must exist: both are caught here, at collection.
    """
    if registered is None:
        registered = registered_names(item.config.getini("markers"))
    merged: Requirement | None = getattr(item, "gpufit_requirement", None)
    # One walk over the item's marks (closest first), not one per marker name.
    for mark in item.iter_markers():
        try:
            if mark.name not in BY_NAME:
                typo = typo_error(mark.name, registered)
                if typo is not None:
                    raise typo
                continue
            req = _parse_marker(mark)
            if req.fits:
                check_fit_models(req, Path(str(item.path)).parent)
        except GpufitError as error:
            raise GpufitError(f"{item.nodeid}: @{error}") from None
        merged = req if merged is None else merged.merge(req)
    return merged


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    registered = registered_names(config.getini("markers"))
    errors = []
    for item in items:
        try:
            item.stash[REQUIREMENT] = item_requirement(item, registered)
        except GpufitError as error:
            errors.append(str(error))
    if errors:
        raise pytest.UsageError("gpufit: bad markers:\n  " + "\n  ".join(errors))


# ---- running ------------------------------------------------------------------------------


def _fit_judge(req: Requirement, item: pytest.Item) -> Any:
    if not req.fits:
        return None
    from pytest_gpufit.fit.judge import fit_judge  # late: only tests with requires_fit pay

    return fit_judge(base=Path(str(item.path)).parent)


def gate(config: pytest.Config, reason: str) -> None:
    """Skip, or fail under the fail policy, with ``reason``."""
    if state_of(config).settings.fail_on_missing:
        raise GateFailure(reason)
    skip(reason)


def skip(reason: str) -> None:
    # Report the test's own location, as skip markers do, not this file's.
    raise pytest.skip.Exception(reason, _use_item_location=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    req = item.stash.get(REQUIREMENT, None)
    if req is None:
        return
    state = state_of(item.config)
    inventory = state.inventory
    if req.vram_free and not inventory.simulated:
        inventory = _with_free_memory_now(inventory)
    try:
        verdict = evaluate(req, inventory, _fit_judge(req, item))
    except GpufitError as error:
        raise GateFailure(f"gpufit: {error}") from None
    item.stash[VERDICT] = verdict
    item.user_properties.append(("gpufit_ok", str(verdict.ok).lower()))
    item.user_properties.append(("gpufit_reason", verdict.reason))
    # Reported in the controller's numbering, so a pinned worker's GPU0 is not everyone's GPU0.
    group = getattr(item.config, "workerinput", {}).get("gpufit_group")
    shown = [group[d] if group and d < len(group) else d for d in verdict.devices]
    item.user_properties.append(("gpufit_devices", ",".join(map(str, shown))))
    if not verdict.ok:
        gate(item.config, verdict.reason)
    elif verdict.simulated and not getattr(item, "gpufit_simulation_safe", False):
        skip(f"simulated: would run on {verdict.reason}")


def _with_free_memory_now(inventory: Inventory) -> Inventory:
    from dataclasses import replace

    from pytest_gpufit.hardware.nvml import free_memory

    free = free_memory([g.uuid for g in inventory.gpus])
    gpus = tuple(
        replace(g, memory_free_bytes=free.get(g.uuid or "", g.memory_free_bytes))
        for g in inventory.gpus
    )
    return replace(inventory, gpus=gpus)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (
        call.when == "setup"
        and call.excinfo is not None
        and call.excinfo.errisinstance(GateFailure)
    ):
        # A gate that fails is the test failing, not an error in a fixture.
        report.when = "call"
        report.longrepr = str(call.excinfo.value)
    return report


def device_for(item: pytest.Item) -> Gpu | None:
    """The GPU a suite target runs on (None for the CPU)."""
    device: str = item.target.device  # type: ignore[attr-defined]
    if not device.startswith("cuda"):
        return None
    inventory = state_of(item.config).inventory
    verdict = item.stash.get(VERDICT, None)
    index_text = device.partition(":")[2]
    index = (
        int(index_text)
        if index_text
        else (verdict.devices[0] if verdict and verdict.devices else 0)
    )
    by_index = {g.index: g for g in inventory.gpus}
    if index not in by_index:
        raise GpufitError(f"target device {device}: no GPU{index} on this machine")
    return by_index[index]


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per GPU group when there are GPUs to pin."""
    from pytest_gpufit.xdist_pinning import auto_workers

    # xdist asks before pytest_configure has run: resolve what is needed here.
    state = config.stash.get(STATE, None) or SessionState(config, _resolve_settings(config))
    return auto_workers(len(state.inventory.gpus), state.settings.gpus_per_worker)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    """pytest-benchmark's saved JSON carries the GPUs and versions its timings depend on."""
    machine_info["gpufit"] = state_of(config).inventory.to_dict()


# ---- results ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gpu_inventory(pytestconfig: pytest.Config) -> Inventory:
    """Every GPU this session may use (simulated ones under ``--gpufit-simulate``)."""
    return state_of(pytestconfig).inventory


@pytest.fixture(scope="session")
def gpu_environment(gpu_inventory: Inventory) -> Environment:
    """Driver, CUDA and library versions of this machine."""
    return gpu_inventory.environment


@pytest.fixture
def gpu(request: pytest.FixtureRequest, gpu_inventory: Inventory) -> Gpu:
    """The GPU this test runs on: the first that meets its requirements, else GPU0.

    With no GPU it skips (or fails under the fail policy) like a requirement; under simulation
    it skips, since simulation never runs GPU work.
    """
    verdict = request.node.stash.get(VERDICT, None)
    by_index = {g.index: g for g in gpu_inventory.gpus}
    if not by_index:
        gate(request.config, f"no GPU: {gpu_inventory.reason or 'none found'}")
    chosen = by_index[verdict.devices[0]] if verdict and verdict.devices else gpu_inventory.gpus[0]
    if gpu_inventory.simulated:
        skip(f"simulated: would run on {chosen.label}")
    return chosen
