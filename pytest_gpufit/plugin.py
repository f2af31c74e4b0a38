"""pytest hooks and fixtures of pytest-gpufit. Thin: every decision is the session's
(``session.py``) or a layer below it.

Imports only the standard library, pytest and small pure modules: no torch, no CUDA.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit import hookspec
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.records import Environment, Gpu, Inventory
from pytest_gpufit.markers import item_requirement, marker_lines, registered_names
from pytest_gpufit.requirements import Requirement
from pytest_gpufit.session import GateFailure, GpufitSession, SuiteSupport, skip
from pytest_gpufit.settings import OPTIONS, ini_reader, resolve
from pytest_gpufit.stash import PLANNING, REQUIREMENT, SESSION, VERDICT, state_of
from pytest_gpufit.suites import is_suite_file
from pytest_gpufit.xdist_pinning import XdistPinning, auto_workers

__all__ = ["GateFailure", "state_of"]


# ---- configuration ------------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpufit", "GPU gating (pytest-gpufit)")
    for option in OPTIONS:
        extra = f" (ini {option.ini}, env {option.env})"
        kwargs: dict[str, Any] = {"choices": option.choices or None}
        if option.switch:
            kwargs = {"action": "store_const", "const": "true"}
        elif option.many:
            kwargs = {"action": "append"}
        group.addoption(
            option.flag,
            dest="gpufit_" + option.name,
            default=None,
            help=(option.help + extra).replace("%", "%%"),  # argparse %-formats help texts
            **kwargs,
        )
        if option.many:
            parser.addini(option.ini, option.help, type="linelist", default=None)
        else:
            parser.addini(option.ini, option.help, default=None)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--gpufit-ab=ENV_A,ENV_B``: this call conducts an A/B instead of running the tests."""
    if "GPUFIT_AB_VARS" in os.environ:
        return None  # a side's own session, started by an A/B: it runs its tests
    asked = (
        config.getoption("gpufit_ab") or config.getini("gpufit_ab") or os.environ.get("GPUFIT_AB")
    )
    if not asked:
        return None
    try:
        settings = resolve(lambda name: config.getoption("gpufit_" + name), ini_reader(config))
    except GpufitError as error:
        raise pytest.UsageError(str(error)) from None
    from pytest_gpufit.ab.native import run  # late: only an A/B conductor

    return run(config, settings)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # tryfirst: the runner selection's trylast pytest_collection_modifyitems must be registered
    # before pytest-split's (pytest calls trylast hooks in the order they were registered), so
    # that it runs after -k, -m and --deselect, as `gpufit plan` sees the items, and before
    # pytest-split shards what it keeps.
    for line in marker_lines():
        config.addinivalue_line("markers", line)
    session = _session(config)
    config.pluginmanager.register(session, "gpufit-session")
    if session.runner_selection is not None:
        config.pluginmanager.register(session.runner_selection, "gpufit-runner-selection")
    if config.pluginmanager.hasplugin("xdist") and not session.is_worker:
        session.pinning = XdistPinning(session)
        config.pluginmanager.register(session.pinning, "gpufit-xdist-pinning")


def _session(config: pytest.Config) -> GpufitSession:
    """The session object, made once (xdist's ``-n auto`` may ask before pytest_configure)."""
    session = config.stash.get(SESSION, None)
    if session is None:
        try:
            settings = resolve(lambda name: config.getoption("gpufit_" + name), ini_reader(config))
            if settings.baseline != "off":
                from pytest_gpufit.baseline import Store  # late: sessions with baselines

                Store(config.rootpath / settings.baseline_dir)
            session = GpufitSession(config, settings, SuiteSupport(_suite_checks, _model_cache))
            if settings.runner:
                from pytest_gpufit.fleet.select import RunnerSelection  # late: fleet jobs only

                session.runner_selection = RunnerSelection.from_settings(config.rootpath, settings)
        except GpufitError as error:
            raise pytest.UsageError(str(error)) from None
        config.stash[SESSION] = session
    return session


def _suite_checks(path: Path) -> Mapping[str, list[str]]:
    """{suite name: every "target::check"} of a suite file, read again at the session's end."""
    from pytest_gpufit.suites.schema import parse_suite  # late: only sessions with suites

    suite = parse_suite(path)
    return {suite.name: [f"{t.name}::{c.kind}" for t in suite.targets for c in t.checks]}


def _model_cache() -> Any:
    from pytest_gpufit.suites.runtime import ModelCache  # late: only sessions with suites

    return ModelCache()


def pytest_sessionstart(session: pytest.Session) -> None:
    if session.config.stash.get(PLANNING, False):
        return  # `gpufit plan` only collects: no probe, no expect (it judges by simulation)
    gpufit = state_of(session.config)
    if gpufit.settings.devices is not None:
        # A GPU index that does not exist is a usage error now, not a traceback in every test.
        gpufit.inventory  # noqa: B018
    gpufit.check_expect()
    gpufit.check_runner_expect()


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> bool | None:
    # A runner that does not match --gpufit-expect runs nothing: not even collection.
    return True if state_of(session.config).expect_failure else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    lines = state_of(session.config).expect_failure
    if not lines:
        return None
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line, file=sys.stderr)
    session.testsfailed = max(session.testsfailed, 1)  # exit code 1: the gate failed
    return True


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = state_of(config)
    # Probe up front only when gpufit is configured or xdist pins workers (it probes anyway);
    # otherwise wait for collection to say whether any test uses gpufit.
    lines = session.runner_selection.header() if session.runner_selection else []
    if session.settings.explicit or config.pluginmanager.has_plugin("dsession"):
        return lines + session.inventory_header()
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    state_of(session.config).note_items(session.items)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    session = state_of(config)
    if session.used and not session.inventory_reported and config.get_verbosity() >= 0:
        return session.inventory_header()
    return []


# ---- collection ---------------------------------------------------------------------------


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_suite_file(file_path):
        from pytest_gpufit.suites.items import SuiteFile  # late: only sessions with suites

        return SuiteFile.from_parent(parent, path=file_path)
    return None


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


def gate(config: pytest.Config, reason: str) -> None:
    """Skip, or fail under the fail policy, with ``reason``."""
    state_of(config).gate(reason)


def _requirement_now(item: pytest.Item) -> Requirement | None:
    """The item's requirement from its marks as they are now.

    A conftest hook that runs after ours (``trylast``) or a fixture may add a gpufit mark
    after collection: read the marks again, or that test would run ungated.
    """
    try:
        req = item_requirement(item)
    except GpufitError as error:
        raise GateFailure(f"gpufit: {error}") from None
    item.stash[REQUIREMENT] = req
    return req


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    selection = state_of(item.config).runner_selection
    failure = selection.setup_failure() if selection is not None else None
    if failure:  # under any policy: the job's plan is not the plan the matrix came from
        raise GateFailure(failure)
    state_of(item.config).setup(item, _requirement_now(item))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    judged = item.stash.get(REQUIREMENT, None)
    req = _requirement_now(item)
    if req is not None and req != judged:  # a fixture added a gpufit mark during set-up
        state_of(item.config).setup(item, req)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (
        call.when in ("setup", "call")
        and call.excinfo is not None
        and call.excinfo.errisinstance(GateFailure)
    ):
        # A gate that fails is the test failing, not an error in a fixture.
        report.when = "call"
        report.longrepr = str(call.excinfo.value)
    gpufit = state_of(item.config)
    raised_xfail = call.excinfo is not None and call.excinfo.errisinstance(pytest.xfail.Exception)
    gpufit.forbid_skip(report, raised_xfail)
    gpufit.annotate(item, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    # A module that skips while it is collected (importorskip at module level) is a skip too.
    state_of(collector.config).forbid_skip(report)
    return report


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per GPU group when there are GPUs to pin."""
    # xdist asks before pytest_configure has run: the session is made here then.
    session = _session(config)
    return auto_workers(len(session.inventory.gpus), session.settings.gpus_per_worker)


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
