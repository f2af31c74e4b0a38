"""The baseline store: one folder, meant to be committed with the suites and reviewed like code.

Layout (format 2; ``--gpufit-baseline-dir``, default ``.gpufit/baselines``)::

    <gpu-model-slug>/<suite-slug>/runs/<run-id>.json   one record per run of one suite
    <gpu-model-slug>/<suite-slug>/accepted             the id of the accepted run

The accepted run is keyed by (GPU model, suite), so saving one suite never replaces another's.
A suite folder belongs to one suite: its name and its file (read from the node ids of its
records). Two suites whose names make one folder name ("Fast Path", "fast-path"), or one name
in two files, are an error naming both, never one replacing the other's baseline.

A run that did not run every check of its suite (``-k``, ``-x``) records the missing ones in
``not_run`` and is accepted only with ``force``.

Format 1 stores (``<gpu>/runs/*.json`` and one ``<gpu>/accepted`` per GPU model) are refused
with the command that migrates them: ``gpufit baseline migrate``.

Writes are atomic (a temporary file, then ``os.replace``; the temporary file is removed when a
write fails); a corrupt, unreadable or wrongly shaped file is one GpufitError naming it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpufit.atomic import why_unwritable, write_text_atomic
from pytest_gpufit.baseline.compare import metric_values
from pytest_gpufit.baseline.fingerprint import Fingerprint
from pytest_gpufit.baseline.golden import check_golden
from pytest_gpufit.errors import GpufitError

FORMAT = 2
RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")
MIGRATE = "gpufit baseline migrate --dir {root}"
AB_FOLDER = "_ab"  # <gpu>/_ab/ab-<stamp>.json: gpufit ab --record


def slug(name: str) -> str:
    """A folder name for a GPU model or a suite.

    >>> slug("NVIDIA H100 80GB HBM3")
    'nvidia-h100-80gb-hbm3'
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def check_run_id(run_id: str) -> str:
    """Run ids are ids, not paths: ``../x`` or ``a/b`` is refused."""
    if not RUN_ID.fullmatch(run_id):
        raise GpufitError(
            f"{run_id!r} is not a run id (letters, digits, - and _; see gpufit baseline list)"
        )
    return run_id


def _why(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _atomic_write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GpufitError(
            f"cannot create baseline folder {path.parent}: {_why(error)}; make it writable or "
            "give --gpufit-baseline-dir another folder"
        ) from None
    try:
        write_text_atomic(path, text)
    except OSError as error:
        raise GpufitError(
            f"cannot write baseline file {path}: {why_unwritable(path, error)}; make the folder "
            "writable or give --gpufit-baseline-dir another folder"
        ) from None


def _check_folder(root: Path) -> None:
    """A folder, or a path that can become one: not a file, not under a file, no link loop."""
    for path in (root, *root.parents):
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # not there yet; a file above it is found further up
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise GpufitError(
                    f"baseline folder {root}: {path} is a symbolic link loop; point "
                    "--gpufit-baseline-dir at a real folder"
                ) from None
            raise GpufitError(f"baseline folder {root}: {path}: {_why(error)}") from None
        if stat.S_ISDIR(mode):
            return
        where = "is a file" if path == root else f"is under a file ({path})"
        raise GpufitError(
            f"baseline folder {root} {where}; give a folder "
            "(--gpufit-baseline-dir, or --dir of gpufit baseline)"
        )


@dataclass(frozen=True)
class RunInfo:
    """One stored run, as listed."""

    gpu: str  # folder slug
    suite: str  # folder slug
    run_id: str
    accepted: bool
    path: Path


def suite_files(results: Mapping[str, Any]) -> list[str]:
    """The suite files a run's checks come from (their node ids' first part): one, normally.

    >>> suite_files({"s/a.yaml::t::fits": {}, "s/a.yaml::u::fits": {}})
    ['s/a.yaml']
    """
    return sorted({str(nodeid).split("::", 1)[0] for nodeid in results})


def _named(suite: str, files: Sequence[str]) -> str:
    return f"{suite!r} ({', '.join(files)})" if files else repr(suite)


def two_files(suite: str, files: Sequence[str]) -> str:
    """The error of one suite name in two files: they would share (and replace) one baseline."""
    return (
        f"suite {suite!r} is named in two files ({', '.join(files)}); a baseline folder holds "
        "one suite, and these would replace each other's baseline: give each file its own "
        "suite: name"
    )


def shared_folder(
    folder: Path, owner: tuple[str, Sequence[str]], suite: str, files: Sequence[str]
) -> str:
    """The error of a second suite in a suite's folder, naming both suites and their files."""
    moved = ""
    if owner[0] == suite:
        moved = (
            f"; if the file moved, the old runs cannot stand for it (their node ids differ): "
            f"remove {folder} and save a new baseline"
        )
    return (
        f"baseline folder {folder} belongs to suite {_named(*owner)}; suite "
        f"{_named(suite, files)} would share it (both make the folder name {folder.name!r}): "
        f"rename one suite (its suite: key){moved}"
    )


def not_run_text(not_run: Sequence[str], when: str = "") -> str:
    """``2 checks of the suite did not run (a, b)``, the first five named.

    >>> not_run_text(["s.yaml::t::fits"], " in its session")
    '1 check of the suite did not run in its session (s.yaml::t::fits)'
    """
    n = len(not_run)
    return (
        f"{n} check{'s' * (n != 1)} of the suite did not run{when} "
        f"({', '.join(not_run[:5])}{' ...' if n > 5 else ''})"
    )


def _refuse_link(path: Path, what: str) -> None:
    """The store holds plain files: a link could make one suite's baseline another record (or
    a file outside the store) without the reviewed diff showing it."""
    if path.is_symlink():
        raise GpufitError(
            f"{what} {path} is a symbolic link; the baseline store holds plain files: "
            "replace the link with the file it points to, or delete it and save a new baseline"
        )


def _check_place(data: Mapping[str, Any], path: Path) -> None:
    """A record in ``<gpu>/<suite>/runs/`` must be of that GPU model and suite: one copied (or
    reached through a linked folder) from another card's folder would be judged as this card's
    baseline, a slower card's figures letting a slow run pass."""
    if path.parent.name != "runs":
        return
    gpu_name, suite = data["fingerprint"]["gpu_name"], data["suite"]
    here = (path.parent.parent.parent.name, path.parent.parent.name)
    if here != (slug(gpu_name), slug(suite)):
        raise GpufitError(
            f"baseline record {path} is a run of {gpu_name!r}, suite {suite!r}, in the folder "
            f"of {here[0]}/{here[1]}; a record copied from another GPU model or suite must not "
            "stand for this one: move it back, or save a new baseline here"
        )


def check_record(data: Any, path: Path) -> dict[str, Any]:
    """A format-2 record, or one GpufitError naming the file and what is wrong."""
    if not isinstance(data, dict) or "format" not in data or "results" not in data:
        raise GpufitError(f"baseline record {path} is not a gpufit baseline record")
    fmt = data["format"]
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT:
        raise GpufitError(
            f"baseline record {path} has format {fmt!r}, newer than this pytest-gpufit reads "
            f"({FORMAT}); upgrade pytest-gpufit"
        )
    if fmt < FORMAT:
        root = path.parent.parent.parent
        raise GpufitError(
            f"baseline record {path} has format {fmt}, from before baselines were kept per "
            f"suite; run `{MIGRATE.format(root=root)}`"
        )
    run_id = data.get("id")
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise GpufitError(f"baseline record {path}: 'id' is missing or not a run id")
    if run_id != path.stem:
        raise GpufitError(f"baseline record {path}: id {run_id!r} does not match its file name")
    for key, kind in (("fingerprint", dict), ("results", dict), ("suite", str)):
        if not isinstance(data.get(key), kind):
            raise GpufitError(
                f"baseline record {path}: {key!r} is {type(data.get(key)).__name__}, "
                f"expected {'a mapping' if kind is dict else 'text'}"
            )
    if not isinstance(data["fingerprint"].get("gpu_name"), str):
        raise GpufitError(f"baseline record {path}: fingerprint.gpu_name is missing")
    not_run = data.get("not_run", [])
    if not isinstance(not_run, list) or not all(isinstance(n, str) for n in not_run):
        raise GpufitError(f"baseline record {path}: 'not_run' is not a list of node ids")
    _check_place(data, path)
    for nodeid, entry in data["results"].items():
        where = f"baseline record {path}: {nodeid}"
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics", {}), dict):
            raise GpufitError(f"{where}: expected a mapping with 'metrics' and 'outcome'")
        if not isinstance(entry.get("outcome"), str):
            raise GpufitError(f"{where}: 'outcome' is missing")
        setup = entry.get("setup")
        if setup is not None and not (
            isinstance(setup, dict)
            and isinstance(setup.get("params"), dict)
            and isinstance(setup.get("target"), dict)
        ):
            raise GpufitError(
                f"{where}: 'setup' is not a mapping with 'params' and 'target' mappings (what "
                "the check was measured with); restore the file, or delete it and save a new "
                "baseline"
            )
        metric_values(entry.get("metrics", {}), where)
        if "golden" in entry.get("metrics", {}):
            check_golden(entry["metrics"]["golden"], where)
    return data


class Store:
    """The baseline folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        _check_folder(self.root)

    def suite_dir(self, gpu_name: str, suite: str) -> Path:
        return self.root / slug(gpu_name) / slug(suite)

    # ---- reading ------------------------------------------------------------------------------

    def legacy(self) -> list[Path]:
        """Format-1 files (``<gpu>/accepted``, ``<gpu>/runs/*.json``) still in the store."""
        if not self.root.is_dir():
            return []
        found: list[Path] = []
        for gpu in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if (gpu / "accepted").is_file():
                found.append(gpu / "accepted")
            if (gpu / "runs").is_dir():
                found += sorted(p for p in (gpu / "runs").glob("*.json") if p.is_file())
        return found

    def _refuse_legacy(self) -> None:
        old = self.legacy()
        if old:
            raise GpufitError(
                f"baseline folder {self.root} holds a format-1 store (one accepted run per GPU "
                f"model, e.g. {old[0]}); baselines are now kept per GPU model and suite: run "
                f"`{MIGRATE.format(root=self.root)}` and commit the result"
            )

    def read(self, path: Path) -> dict[str, Any]:
        _refuse_link(path, "baseline record")
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise GpufitError(f"baseline record {path} does not exist") from None
        except (OSError, ValueError) as error:  # ValueError covers bad UTF-8 and bad JSON
            raise GpufitError(
                f"baseline record {path} is unreadable or corrupt ({error}); "
                "restore it or delete it and save a new baseline"
            ) from None
        return check_record(data, path)

    def _pointer(self, pointer: Path) -> str | None:
        _refuse_link(pointer, "baseline pointer")
        try:
            run_id = pointer.read_text("utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise GpufitError(
                f"baseline pointer {pointer} is unreadable ({error}); it should hold one run id: "
                "restore it or run gpufit baseline accept RUN"
            ) from None
        if not RUN_ID.fullmatch(run_id):
            raise GpufitError(
                f"baseline pointer {pointer} is corrupt: {run_id[:80]!r}; restore it or run "
                "gpufit baseline accept RUN"
            )
        return run_id

    def accepted(self, gpu_name: str, suite: str) -> dict[str, Any] | None:
        """The accepted run of ``suite`` on ``gpu_name``, or None when there is none."""
        self._refuse_legacy()
        folder = self.suite_dir(gpu_name, suite)
        run_id = self._pointer(folder / "accepted")
        if run_id is None:
            return None
        record = self.read(folder / "runs" / f"{run_id}.json")
        if record["suite"] != suite:  # another suite of the same folder name
            owner = (record["suite"], suite_files(record["results"]))
            raise GpufitError(shared_folder(folder, owner, suite, []))
        return record

    def _owner(self, folder: Path) -> tuple[str, list[str]] | None:
        """The suite (name, files) a suite folder belongs to: its accepted run's, else its
        newest run's; None for a new folder."""
        run_id = self._pointer(folder / "accepted")
        runs = sorted((folder / "runs").glob("*.json")) if (folder / "runs").is_dir() else []
        path = folder / "runs" / f"{run_id}.json" if run_id else (runs[-1] if runs else None)
        if path is None:
            return None
        record = self.read(path)
        return record["suite"], suite_files(record["results"])

    def check_owner(self, gpu_name: str, suite: str, results: Mapping[str, Any]) -> None:
        """Refuse a run of ``suite`` that would share its folder with another suite (another
        name of the same folder name, or the same name in another file)."""
        files = suite_files(results)
        if len(files) > 1:
            raise GpufitError(two_files(suite, files))
        folder = self.suite_dir(gpu_name, suite)
        owner = self._owner(folder)
        if owner is not None and owner != (suite, files):
            saved = f"; nothing was saved for {suite!r}"
            raise GpufitError(shared_folder(folder, owner, suite, files) + saved)

    def runs(self) -> list[RunInfo]:
        """Every stored run, per GPU model and suite, oldest first within each."""
        self._refuse_legacy()
        out: list[RunInfo] = []
        if not self.root.is_dir():
            return out
        for runs in sorted(self.root.glob("*/*/runs")):
            if not runs.is_dir():
                continue
            accepted = self._pointer(runs.parent / "accepted")
            for run in sorted(runs.glob("*.json")):
                out.append(
                    RunInfo(
                        runs.parent.parent.name,
                        runs.parent.name,
                        run.stem,
                        run.stem == accepted,
                        run,
                    )
                )
        return out

    def find(self, run_id: str) -> Path:
        check_run_id(run_id)
        self._refuse_legacy()
        matches = list(self.root.glob(f"*/*/runs/{run_id}.json")) if self.root.is_dir() else []
        if len(matches) != 1:
            raise GpufitError(f"no single run {run_id!r} in {self.root} (gpufit baseline list)")
        return matches[0]

    # ---- writing ------------------------------------------------------------------------------

    def write_run(
        self,
        fp: Fingerprint,
        suite: str,
        results: Mapping[str, Any],
        accept: bool = False,
        *,
        not_run: Sequence[str] = (),
    ) -> str:
        """Store one run of one suite; accept it only when asked, no check failed and none of
        the suite's checks is in ``not_run`` (checks the session did not run).

        A run of another suite whose name makes the same folder name, or of the same name from
        another file, is refused (GpufitError) before anything is written.
        """
        self._refuse_legacy()
        self.check_owner(fp.gpu_name, suite, results)
        # Microseconds in the id, so ids sort in creation order (list, plot) even for runs
        # saved within one second.
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"
        run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
        record = {
            "format": FORMAT,
            "id": run_id,
            "created": now,
            "suite": suite,
            "fingerprint": fp.to_dict(),
            "results": dict(results),
        }
        if not_run:
            record["not_run"] = sorted(not_run)
        path = self.suite_dir(fp.gpu_name, suite) / "runs" / f"{run_id}.json"
        _atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        if accept and not failed_checks(record) and not not_run:
            self.accept(run_id)
        return run_id

    # ---- A/B pairs (gpufit ab --record) ---------------------------------------------------

    def ab_dir(self, gpu_name: str) -> Path:
        """``<gpu>/_ab``: no suite's folder can be named so (a slug has no ``_``)."""
        return self.root / slug(gpu_name) / AB_FOLDER

    def write_ab(self, data: Mapping[str, Any]) -> Path:
        """Store one ``gpufit ab`` result (both sides' fingerprints, the verdicts) beside the
        baselines of its card, so later reports can say B was A/B-tested against A there."""
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"
        record = {**data, "id": f"ab-{stamp}-{uuid.uuid4().hex[:6]}", "created": now}
        gpu = str(record["b"]["fingerprint"].get("gpu_name") or "cpu")
        path = self.ab_dir(gpu) / f"{record['id']}.json"
        _atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return path

    def ab_records(self) -> list[dict[str, Any]]:
        """Every stored A/B pair, oldest first; an unreadable one is an error naming it."""
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob(f"*/{AB_FOLDER}/ab-*.json")):
            _refuse_link(path, "A/B record")
            try:
                data = json.loads(path.read_text("utf-8"))
                ok = data.get("schema") == "gpufit-ab/1" and {"a", "b", "verdict"} <= set(data)
            except (OSError, ValueError, AttributeError):
                ok = False
            if not ok:
                raise GpufitError(
                    f"A/B record {path} is unreadable or not a gpufit ab result; restore it "
                    "or delete it"
                )
            out.append(data)
        return sorted(out, key=lambda d: float(d.get("created", 0)))

    def accept(self, run_id: str, force: bool = False) -> list[Path]:
        """Make a run the accepted one of its GPU model and suite; return the files to commit.

        A run with failed checks is refused unless ``force``: accepting it would make the
        regression the new normal; so is a run of part of its suite (``-k``): it would stand
        for checks it did not run.
        """
        path = self.find(run_id)
        record = self.read(path)
        failed = failed_checks(record)
        if failed and not force:
            raise GpufitError(
                f"run {run_id} has {len(failed)} failed check{'s' * (len(failed) != 1)} "
                f"({', '.join(failed)}); accepting it would make the failure the baseline. "
                "Fix and save again, or accept anyway with --force"
            )
        not_run = record.get("not_run", [])
        if not_run and not force:
            raise GpufitError(
                f"run {run_id}: {not_run_text(not_run, ' in its session')}; "
                "a baseline is accepted only from a run of the whole suite: run it all and "
                "save again, or accept it anyway with --force"
            )
        pointer = path.parent.parent / "accepted"
        _atomic_write(pointer, run_id + "\n")
        return [path, pointer]

    def migrate(self) -> list[str]:
        """Rewrite a format-1 store as format 2: each run split per suite, pointers per suite.

        Returns what was done, one line per file. Format-1 runs held only passed checks. Every
        record is read and planned first: two suites that would share a folder (names of one
        folder name, or one name in two files) are refused before anything is written or
        removed.
        """
        writes: list[tuple[Path, dict[str, Any], bool]] = []  # (file, record, accepted)
        removals: list[Path] = []
        owners: dict[Path, tuple[str, list[str]]] = {}
        clashes: list[str] = []
        gpus = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        for gpu in gpus:
            pointer = gpu / "accepted"
            old_accepted = self._pointer(pointer) if pointer.is_file() else None
            for run in sorted(p for p in (gpu / "runs").glob("*.json") if p.is_file()):
                data, by_suite = _format1_suites(run)
                for suite, results in by_suite.items():
                    files = suite_files(results)
                    folder = gpu / slug(suite)
                    if folder.exists() and not folder.is_dir():  # format 1's own 'accepted'
                        clashes.append(
                            f"run {run.name}: suite {_named(suite, files)} needs the folder "
                            f"{folder}, which is a file of the format-1 store"
                        )
                        continue
                    owner = owners.setdefault(folder, self._owner(folder) or (suite, files))
                    if len(files) > 1:
                        clashes.append(f"run {run.name}: {two_files(suite, files)}")
                    elif owner != (suite, files):
                        clashes.append(
                            f"run {run.name}: suites {_named(*owner)} and {_named(suite, files)} "
                            f"would share the folder {folder}"
                        )
                    run_id = run.stem if len(by_suite) == 1 else f"{run.stem}-{slug(suite)}"
                    check_run_id(run_id)
                    record = dict(data, format=FORMAT, id=run_id, suite=suite, results=results)
                    target = folder / "runs" / f"{run_id}.json"
                    check_record(record, target)
                    if target.exists() or any(target == w[0] for w in writes):
                        clashes.append(f"run {run.name}: {target} exists already")
                    writes.append((target, record, run.stem == old_accepted))
                removals.append(run)
            if pointer.is_file():
                removals.append(pointer)
        if clashes:
            shown = list(dict.fromkeys(clashes))
            more = f"; and {len(shown) - 5} more" if len(shown) > 5 else ""
            raise GpufitError(
                f"cannot migrate {self.root}: {'; '.join(shown[:5])}{more}. A baseline "
                "folder holds one suite: give one suite another name (its suite: key, and the "
                '"suite" of its entries in the old records) or remove its entries from the old '
                "records, then migrate again; nothing was changed"
            )
        lines: list[str] = []
        for target, record, accepted in writes:
            _atomic_write(target, json.dumps(record, indent=2, sort_keys=True) + "\n")
            lines.append(f"wrote {target}")
            if accepted:
                _atomic_write(target.parent.parent / "accepted", record["id"] + "\n")
                lines.append(f"wrote {target.parent.parent / 'accepted'} ({record['id']})")
        for path in removals:  # only after every record is written: nothing is lost
            path.unlink()
            lines.append(f"removed {path}")
        for gpu in gpus:
            try:
                (gpu / "runs").rmdir()
            except OSError:
                pass  # not empty (a suite named "runs") or already gone
        return lines


def _format1_suites(run: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A format-1 run, and its results per suite (each marked passed, as format 1 held only
    passed checks); an unreadable or wrongly shaped run is a GpufitError naming it."""
    try:
        data = json.loads(run.read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise GpufitError(f"baseline record {run} is unreadable ({error})") from None
    if not isinstance(data, dict) or data.get("format") != 1:
        raise GpufitError(f"baseline record {run} is not a format-1 record")
    if not isinstance(data.get("results"), dict) or not isinstance(data.get("fingerprint"), dict):
        raise GpufitError(f"baseline record {run} is not a gpufit baseline record")
    by_suite: dict[str, dict[str, Any]] = {}
    for nodeid, entry in data["results"].items():
        if not isinstance(entry, dict):
            raise GpufitError(f"baseline record {run}: {nodeid} is not a mapping")
        suite = str(entry.get("suite") or nodeid.split("::", 1)[0])
        by_suite.setdefault(suite, {})[nodeid] = {"outcome": "passed", **entry}
    return data, dict(sorted(by_suite.items()))


def failed_checks(record: Mapping[str, Any]) -> list[str]:
    """Node ids of the checks in a run that did not pass (failed or errored)."""
    return sorted(
        nodeid
        for nodeid, entry in record["results"].items()
        if entry.get("outcome") not in ("passed", "skipped")
    )
