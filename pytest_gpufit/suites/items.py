"""Suite files as pytest collectors: file -> target -> one item per check."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit.backends import MissingExtra, load_backend
from pytest_gpufit.backends.capabilities import Serve
from pytest_gpufit.baseline.setup import check_setup
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.metrics import nulled
from pytest_gpufit.requirements import Requirement, Verdict
from pytest_gpufit.session import placement
from pytest_gpufit.stash import state_of
from pytest_gpufit.suites.checks import CheckFailed, Context, run_check
from pytest_gpufit.suites.compare import against_baseline
from pytest_gpufit.suites.kinds import KINDS
from pytest_gpufit.suites.records import Check, Suite, Target
from pytest_gpufit.suites.schema import parse_suite
from pytest_gpufit.units import format_gb


class BaselineWarning(UserWarning):
    """A metric got better than its baseline beyond tolerance: time for a new baseline?"""


class SuiteFile(pytest.File):
    """A YAML suite; a malformed file is one collection error that names file, line and field."""

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        try:
            suite = parse_suite(self.path)
        except GpufitError as error:
            raise self.CollectError(str(error)) from None
        for target in suite.targets:
            yield TargetCollector.from_parent(self, name=target.name, suite=suite, target=target)


class TargetCollector(pytest.Collector):
    def __init__(self, *, suite: Suite, target: Target, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.target = target

    def collect(self) -> Iterator[pytest.Item]:
        for check in self.target.checks:
            yield CheckItem.from_parent(self, name=check.kind, check=check)

    @property
    def served_key(self) -> str:
        return f"{self.suite.path}::{self.target.name}"

    def teardown(self) -> None:
        # After the target's last check (pytest tears a collector down when the next item is
        # not its own): a launched server stops here, not at the end of the session.
        if self.target.backend == "openai":
            state_of(self.config).stop_served(self.served_key)


class CheckItem(pytest.Item):
    """One check of one target: ``suites/qwen3.yaml::qwen3-30b-a3b::throughput``."""

    def __init__(self, *, check: Check, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        parent = self.parent
        assert isinstance(parent, TargetCollector)
        self.suite, self.target = parent.suite, parent.target
        self.check_kind = KINDS[check.kind]
        # An estimate (fits) runs against simulated cards; the rest would use the device.
        self.gpufit_simulation_safe = self.check_kind.simulation

    @property
    def gpufit_launched(self) -> str | None:
        """The key of the server gpufit launches for this check's target, or None (a check
        that launches nothing): checks of one key share one server in one process."""
        parent = self.parent
        assert isinstance(parent, TargetCollector)
        return parent.served_key if self.target.launch is not None else None

    @property
    def gpufit_requirement(self) -> Requirement | None:
        parts = [r for r in (self.suite.requirement, self.target.requirement) if r]
        if self.target.device.startswith("cuda"):
            index = self.target.device.partition(":")[2]
            parts.append(Requirement(count=int(index) + 1 if index else 1))
            if self.check_kind.requires is not None:  # allreduce: 2 GPUs
                parts.append(self.check_kind.requires)
        merged = None
        for part in parts:
            merged = part if merged is None else merged.merge(part)
        return merged

    def runtest(self) -> None:
        state = state_of(self.config)
        target, gpu = placement(self)  # cuda:N of the judged GPU
        ctx = Context(target, gpu, state.model_cache, devices=self._devices(state, gpu))
        if self.target.backend == "openai":
            ctx.served, ctx.progress = self._served(state, ctx), self._progress()
        fail_on_missing = state.settings.fail_on_missing
        out_of_memory: str | None = None
        try:
            try:
                run_check(ctx, self.check)
                if state.settings.baseline == "compare":
                    self._compare(state, ctx)
                elif state.settings.baseline == "off" and self._baseline_judges:
                    # Golden tokens are judged only against a baseline: with none, nothing
                    # was checked, and a green here would claim numerics that were not.
                    state.gate(
                        f"{self._baseline_judges} is judged against the accepted baseline, "
                        "and baselines are off (--gpufit-baseline); run with "
                        "--gpufit-baseline=compare, or =save to record the reference"
                    )
            except MissingExtra as error:
                # Under the fail policy a missing or broken extra is unmet, like a missing GPU.
                if fail_on_missing:
                    raise CheckFailed(str(error)) from None
                raise pytest.skip.Exception(str(error), _use_item_location=True) from None
            except Exception as error:
                if not _is_out_of_memory(error):
                    raise
                text = str(error).strip()
                out_of_memory = text.splitlines()[0] if text else type(error).__name__
            if out_of_memory is not None:
                # Recovered here, outside the except block: there the traceback still holds
                # the failing frames and their tensors, so no cache clear could free them.
                ctx.cache.recover()
                raise CheckFailed(_oom_message(ctx, out_of_memory))
        finally:
            record(self, ctx.gpu, ctx.metrics)

    def _devices(self, state: Any, gpu: Gpu | None) -> tuple[Gpu, ...]:
        """Every GPU the verdict picked, for a check of several devices (allreduce)."""
        if gpu is None:
            return ()
        verdict = state.verdict_of(self)
        judged = verdict.devices if verdict is not None else ()
        by_index = {g.index: g for g in state.inventory.gpus}
        devices = tuple(by_index[i] for i in judged if i in by_index)
        return devices if gpu in devices else (gpu,)

    @property
    def _baseline_judges(self) -> str | None:
        """What in this check only an accepted baseline judges (``reference: golden``)."""
        judges = self.check_kind.baseline_judges
        return judges(self.check.params) if judges is not None else None

    def _served(self, state: Any, ctx: Context) -> Callable[[], Serve]:
        """A callable giving the target's running server (launched on the first call)."""
        target, parent = ctx.target, self.parent
        assert isinstance(parent, TargetCollector)
        verdict = state.verdict_of(self)
        pinned = None
        if ctx.gpu is not None:
            # The server gets the device the requirements were judged on.
            devices = verdict.devices if verdict is not None and verdict.devices else ()
            if ctx.gpu.index not in devices:
                devices = (ctx.gpu.index,)
            pinned = state.cuda_visible_devices(Verdict(True, "", devices))

        logs = server_logs(self.config) if target.launch is not None else None

        def start() -> Any:
            backend = load_backend("openai")  # MissingExtra: judged by the policy
            return backend.start(target, pinned, logs)

        return lambda: state.served(parent.served_key, start)

    def _progress(self) -> Callable[[str], None] | None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return None

        def line(text: str) -> None:
            # Past the test's output capture, as live logging does: the line shows at once.
            if capture is None:
                reporter.ensure_newline()
                reporter.write_line(text)
                return
            with capture.global_and_fixture_disabled():
                reporter.ensure_newline()
                reporter.write_line(text)

        return line

    def _compare(self, state: Any, ctx: Context) -> None:
        baselines = state.baselines
        gpu = ctx.gpu

        def remeasure() -> dict[str, Any]:
            # A fresh context on the same (judged, placed) device and model cache: only the
            # figures are wanted, so a threshold missed on a re-run does not stop the
            # confirmation. ``self.target`` may say plain ``cuda``, which is cuda:0.
            again = Context(
                ctx.target, gpu, state.model_cache, served=ctx.served, devices=ctx.devices
            )
            try:
                run_check(again, self.check)
            except CheckFailed:
                pass
            return again.metrics

        outcome = against_baseline(
            baselines.accepted(gpu.name if gpu else "cpu", self.suite.name),
            str(baselines.store.root),
            self.nodeid,
            _with_engine(baselines.fingerprint(gpu), ctx.metrics.get("engine")),
            ctx.metrics,
            self.target.baseline,
            state.settings.baseline_tolerance,
            remeasure,
            self.suite.name,
            setup_of(self, ctx.metrics),
        )
        ctx.metrics["baseline"] = outcome.comparisons
        for message in outcome.warnings:
            # Shown at the suite's check, not at this module's line.
            warnings.warn_explicit(
                BaselineWarning(message), BaselineWarning, str(self.path), self.check.line
            )
        if outcome.failures:
            raise CheckFailed("; ".join(outcome.failures))

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        if isinstance(excinfo.value, (CheckFailed, GpufitError)):
            return f"{self.target.name}::{self.check.kind}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return (
            self.path,
            self.check.line - 1,
            f"{self.suite.name}::{self.target.name}::{self.check.kind}",
        )


# xdist's modes that deal a file's items to any worker (``loadfile``, ``loadscope`` keep a
# target's checks together; ``each`` runs every check on every worker on purpose).
SPLITTING_DIST = frozenset({"load", "worksteal"})


def split_launches(items: list[pytest.Item], dist: str, workers: int) -> str | None:
    """The warning for a run that deals a launched target's checks to several xdist workers
    (each launches its own server for the target: two on one GPU share its memory and time),
    or None.

    >>> split_launches([], "load", 2) is None
    True
    """
    if dist not in SPLITTING_DIST or workers < 2:
        return None
    counts: dict[str, int] = {}
    for item in items:
        key = getattr(item, "gpufit_launched", None)
        if isinstance(key, str):
            counts[key] = counts.get(key, 0) + 1
    split = [f"{key} ({n} checks)" for key, n in counts.items() if n > 1]
    if not split:
        return None
    return (
        f"-n {workers} with --dist {dist} deals the checks of launched "
        f"target{'s' if len(split) > 1 else ''} {', '.join(split)} to several workers, and "
        "each worker that gets one launches its own server for it (on one GPU they share its "
        "memory and time, and each start-up is paid again); run with --dist loadfile (or "
        "loadscope) so that one worker gets all of a target's checks"
    )


def server_logs(config: pytest.Config) -> Path | None:
    """Where launched servers log: beside the JSON report (``--gpufit-report``) when the run
    writes one, else in pytest's own temporary folder of this run (``--basetemp``, or the
    numbered folder pytest keeps for its last three runs); never the system's temp, where
    nothing removes them. None (the system's temp) only where pytest has no such folder
    (its tmpdir plugin disabled)."""
    report = state_of(config).settings.report
    if report:
        return Path(report).resolve().parent / "gpufit-servers"
    # pytest gives its TempPathFactory to fixtures only; a suite item is no function.
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return None
    return Path(factory.getbasetemp()) / "gpufit-servers"


def _with_engine(fingerprint: Any, engine: Any) -> Any:
    """The fingerprint with the serving engine and version, so a change of engine leads the
    message of a regression like a driver change does."""
    if not isinstance(engine, str):
        return fingerprint
    return dataclasses.replace(fingerprint, engine=engine)


def setup_of(item: CheckItem, metrics: dict[str, Any]) -> dict[str, Any]:
    """What the check's figures are measured with: its parameters (and which of them only
    judge), the target's identity, the number of GPUs it was judged on, and the model its
    server listed where the target is served."""
    requirement = item.gpufit_requirement if item.target.device.startswith("cuda") else None
    served = metrics.get("served_model") if item.target.backend == "openai" else None
    return check_setup(
        item.check.kind,
        item.check.params,
        item.target,
        item.check_kind.judging_only,
        requirement.count if requirement is not None else None,
        served,
    )


def record(item: CheckItem, gpu: Any, metrics: dict[str, Any]) -> None:
    """Measurements as JUnit properties, and for the summary, the report and the baseline."""
    entry = {
        "suite": item.suite.name,
        "target": item.target.name,
        "check": item.check.kind,
        "dtype": item.target.dtype,
        "device": item.target.device,
        "gpu": gpu.name if gpu else "cpu",
        "backend": item.target.backend,
        "metrics": nulled({k: v for k, v in metrics.items() if k != "tokens"}),
        "setup": setup_of(item, metrics),  # for baselines
    }
    # Strict JSON: a NaN has already failed the check (its message names it); here it is null.
    item.user_properties.append(("gpufit_measurement", json.dumps(entry, allow_nan=False)))
    for key, value in metrics.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and math.isfinite(value):
            item.user_properties.append((key, value))


def _is_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _oom_message(ctx: Context, error: str) -> str:
    parts = [f"out of memory on {ctx.target.device}"]
    try:
        parts.append(f"estimate {format_gb(ctx.estimate().total_bytes)}")
    except GpufitError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and ctx.target.device.startswith("cuda"):
        try:
            free, total = torch.cuda.mem_get_info(torch.device(ctx.target.device))
            parts.append(f"free now {format_gb(free)} of {format_gb(total)}")
        except RuntimeError:  # a device left in an error state: the report still gets out
            parts.append("free memory unknown (the device did not answer)")
    return f"{', '.join(parts)}; the device was cleaned for the next test ({error})"
