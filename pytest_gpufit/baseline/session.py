"""One pytest session's use of the store: accepted runs read once, the session's runs saved."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpufit.baseline.fingerprint import Fingerprint, default_host, fingerprint, git_commit
from pytest_gpufit.baseline.fleet import (
    FleetVerdict,
    HostRun,
    judge_fleet,
    latest_per_host,
    run_values,
)
from pytest_gpufit.baseline.store import Store, failed_checks, slug, suite_files, two_files
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.records import Environment, Gpu, GpuLink


@dataclass(frozen=True)
class SavedRun:
    """One run written at the end of a session: what the session prints about it."""

    gpu_name: str
    suite: str
    run_id: str
    checks: int
    accepted: bool
    failed: tuple[str, ...]  # node ids of the checks that did not pass
    accept_asked: bool
    not_run: tuple[str, ...] = ()  # checks of the suite this session did not run (-k, -x)
    fleet_notes: tuple[str, ...] = ()  # the fleet check: no verdict, or better than the fleet

    @property
    def message(self) -> str:
        return "\n".join([self._saved, *self.fleet_notes])

    @property
    def _saved(self) -> str:
        head = (
            f"gpufit: baseline run {self.run_id} ({self.checks} "
            f"check{'s' * (self.checks != 1)}) of suite {self.suite} saved"
        )
        if self.accepted:
            return f"{head} and accepted for {self.gpu_name}"
        if not self.accept_asked:
            return f"{head} for {self.gpu_name}"
        if self.not_run:
            n = len(self.not_run)
            return (
                f"{head} for {self.gpu_name} but NOT accepted: {n} check{'s' * (n != 1)} of the "
                f"suite did not run in this session (deselected, or the run stopped early: "
                f"{', '.join(self.not_run[:5])}{' ...' if n > 5 else ''}); a baseline is "
                "accepted only from a run of the whole suite: run it all, or accept it with "
                f"`gpufit baseline accept {self.run_id} --force`"
            )
        n = len(self.failed)
        return (
            f"{head} for {self.gpu_name} but NOT accepted: {n} failed check{'s' * (n != 1)} "
            f"({', '.join(self.failed)}); fix and save again, or accept it with "
            f"`gpufit baseline accept {self.run_id} --force`"
        )


class FleetFailure(GpufitError):
    """This host is out of line with the fleet (or, under the fail policy, could not be judged).

    Raised by ``BaselineSession.save`` after every run is written, so the session fails."""


class BaselineSession:
    """Reads accepted baselines once per (GPU model, suite); saves one run per (GPU, suite).

    The git commit is read once, here, not per compared check. ``host`` names this machine in
    the store (default: its hostname); with ``fleet_tolerance``, ``save`` judges each saved
    run against the other hosts' latest runs (``fleet_strict``: no verdict fails too).
    """

    def __init__(
        self,
        store: Store,
        environment: Environment,
        gpus: tuple[Gpu, ...],
        root: Path | None = None,
        *,
        host: str | None = None,
        fleet_tolerance: float | None = None,
        fleet_strict: bool = False,
        links: tuple[GpuLink, ...] = (),
    ) -> None:
        self.store = store
        self.links = links  # the machine's GPU pairs: each card's enter its fingerprint
        self.environment = environment
        self.gpus = {g.name: g for g in gpus}
        self.commit = git_commit(root)
        self.host = host or default_host()
        self.fleet_tolerance = fleet_tolerance
        self.fleet_strict = fleet_strict
        self._accepted: dict[tuple[str, str], dict[str, Any] | None] = {}

    def fingerprint(self, gpu: Gpu | None) -> Fingerprint:
        return fingerprint(gpu, self.environment, self.commit, host=self.host, links=self.links)

    def host_runs(self, gpu_name: str, suite: str) -> tuple[list[HostRun], int]:
        """The latest stored run per host of ``suite`` on ``gpu_name``, and the number of runs
        that name no host."""
        folder = (slug(gpu_name), slug(suite))
        records = (
            (str(info.path), self.store.read(info.path))
            for info in self.store.runs()
            if (info.gpu, info.suite) == folder
        )
        return latest_per_host(records)

    def accepted(self, gpu_name: str, suite: str) -> dict[str, Any] | None:
        """The accepted run of ``suite`` on ``gpu_name`` (None: none accepted yet)."""
        key = (gpu_name, suite)
        if key not in self._accepted:
            self._accepted[key] = self.store.accepted(gpu_name, suite)
        return self._accepted[key]

    def save(
        self,
        measurements: Mapping[str, Mapping[str, Any]],
        accept: bool,
        expected: Mapping[str, Collection[str]] | None = None,
    ) -> list[SavedRun]:
        """Write one run per (GPU model, suite) with every check and its outcome.

        ``measurements`` maps node ids to entries with ``gpu``, ``suite``, ``metrics`` and
        ``outcome``. With ``accept``, a run is accepted only when none of its checks failed
        and, where ``expected`` lists a suite's check node ids, every one of them ran (a run
        saved with ``-k`` must not become the whole suite's baseline).
        """
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for nodeid, entry in measurements.items():
            key = (str(entry.get("gpu", "cpu")), str(entry.get("suite", nodeid.split("::")[0])))
            groups.setdefault(key, {})[nodeid] = {"outcome": "passed", **entry}
        ran: dict[str, set[str]] = {}
        for (_, suite), results in groups.items():
            ran.setdefault(suite, set()).update(results)
        clashes = _clashes(groups)
        saved = []
        fleet_failures: list[str] = []
        refused: list[str] = []
        for (gpu_name, suite), results in sorted(groups.items()):
            if (gpu_name, suite) in clashes:
                refused.append(clashes[gpu_name, suite])
                continue
            failed = failed_checks({"results": results})
            not_run = tuple(sorted(set((expected or {}).get(suite, ())) - ran[suite]))
            ok = accept and not failed and not not_run
            fp = self.fingerprint(self.gpus.get(gpu_name))
            engines = sorted(
                {str(e["metrics"]["engine"]) for e in results.values() if _engine_of(e)}
            )
            if engines:
                fp = dataclasses.replace(fp, engine=", ".join(engines))
            try:
                self.store.check_owner(gpu_name, suite, results)
            except GpufitError as error:  # another suite owns the folder: save the others
                refused.append(str(error))
                continue
            verdict = self._fleet(gpu_name, suite, fp, results) if not accept else None
            run_id = self.store.write_run(fp, suite, results, accept=ok, not_run=not_run)
            saved.append(
                SavedRun(
                    gpu_name,
                    suite,
                    run_id,
                    len(results),
                    ok,
                    tuple(failed),
                    accept,
                    not_run,
                    verdict.notes if verdict else (),
                )
            )
            fleet_failures += verdict.failures if verdict else ()
        kept = "; ".join(f"{run.run_id} ({run.gpu_name}, {run.suite})" for run in saved)
        if refused:
            raise GpufitError("\n".join([*refused, f"(runs saved: {kept or 'none'})"]))
        if fleet_failures:
            # Every run is written first: the record of a slow host is what the fleet view shows.
            raise FleetFailure("\n".join([*fleet_failures, f"(runs saved: {kept})"]))
        return saved

    def _fleet(
        self, gpu_name: str, suite: str, fp: Fingerprint, results: Mapping[str, Any]
    ) -> FleetVerdict | None:
        """This run against the other hosts' latest runs, before it is written (so a host's
        own earlier runs never count: it is judged against the others only)."""
        if self.fleet_tolerance is None:
            return None
        runs, _ = self.host_runs(gpu_name, suite)
        others = [run for run in runs if run.host != self.host]
        values = run_values({"results": results}, f"this run of {suite}")
        return judge_fleet(
            self.host or "(unnamed)",
            gpu_name,
            suite,
            fp.to_dict(),
            values,
            others,
            self.fleet_tolerance,
            self.fleet_strict,
        )


def _clashes(groups: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """The (GPU, suite) runs of one session that cannot have a baseline folder of their own:
    one suite name in two files, or two suite names that make one folder name. Each -> why."""
    out: dict[tuple[str, str], str] = {}
    by_folder: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for gpu_name, suite in groups:
        by_folder.setdefault((slug(gpu_name), slug(suite)), []).append((gpu_name, suite))
    for key, results in groups.items():
        files = suite_files(results)
        if len(files) > 1:
            out[key] = two_files(key[1], files)
    for keys in by_folder.values():
        names = sorted({suite for _, suite in keys})
        if len(names) < 2:
            continue
        named = " and ".join(
            f"{k[1]!r} ({', '.join(suite_files(groups[k]))})" for k in sorted(keys)
        )
        for key in keys:
            out[key] = (
                f"suites {named} would share the baseline folder {slug(key[0])}/{slug(key[1])}"
                " (a folder holds one suite); rename one suite (its suite: key); nothing was "
                "saved for either"
            )
    return out


def _engine_of(entry: Mapping[str, Any]) -> bool:
    metrics = entry.get("metrics")
    return isinstance(metrics, Mapping) and isinstance(metrics.get("engine"), str)
