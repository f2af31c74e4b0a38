"""The baseline store: one folder, meant to be committed with the suites and reviewed like code.

Layout (format 2; ``--gpufit-baseline-dir``, default ``.gpufit/baselines``)::

    <gpu-model-slug>/<suite-slug>/runs/<run-id>.json   one record per run of one suite
    <gpu-model-slug>/<suite-slug>/accepted             the id of the accepted run

The accepted run is keyed by (GPU model, suite), so saving one suite never replaces another's.
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
from collections.abc import Mapping
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
    _check_place(data, path)
    for nodeid, entry in data["results"].items():
        where = f"baseline record {path}: {nodeid}"
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics", {}), dict):
            raise GpufitError(f"{where}: expected a mapping with 'metrics' and 'outcome'")
        if not isinstance(entry.get("outcome"), str):
            raise GpufitError(f"{where}: 'outcome' is missing")
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
        return self.read(folder / "runs" / f"{run_id}.json")

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
        self, fp: Fingerprint, suite: str, results: Mapping[str, Any], accept: bool = False
    ) -> str:
        """Store one run of one suite; accept it only when asked and no check failed."""
        self._refuse_legacy()
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
        path = self.suite_dir(fp.gpu_name, suite) / "runs" / f"{run_id}.json"
        _atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        if accept and not failed_checks(record):
            self.accept(run_id)
        return run_id

    def accept(self, run_id: str, force: bool = False) -> list[Path]:
        """Make a run the accepted one of its GPU model and suite; return the files to commit.

        A run with failed checks is refused unless ``force``: accepting it would make the
        regression the new normal.
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
        pointer = path.parent.parent / "accepted"
        _atomic_write(pointer, run_id + "\n")
        return [path, pointer]

    def migrate(self) -> list[str]:
        """Rewrite a format-1 store as format 2: each run split per suite, pointers per suite.

        Returns what was done, one line per file. Format-1 runs held only passed checks.
        """
        lines: list[str] = []
        for gpu in (
            sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        ):
            pointer = gpu / "accepted"
            old_accepted = self._pointer(pointer) if pointer.is_file() else None
            runs = sorted(p for p in (gpu / "runs").glob("*.json") if p.is_file())
            for run in runs:
                try:
                    data = json.loads(run.read_text("utf-8"))
                except (OSError, ValueError) as error:
                    raise GpufitError(f"baseline record {run} is unreadable ({error})") from None
                if not isinstance(data, dict) or data.get("format") != 1:
                    raise GpufitError(f"baseline record {run} is not a format-1 record")
                if not isinstance(data.get("results"), dict) or not isinstance(
                    data.get("fingerprint"), dict
                ):
                    raise GpufitError(f"baseline record {run} is not a gpufit baseline record")
                by_suite: dict[str, dict[str, Any]] = {}
                for nodeid, entry in data["results"].items():
                    if not isinstance(entry, dict):
                        raise GpufitError(f"baseline record {run}: {nodeid} is not a mapping")
                    suite = str(entry.get("suite") or nodeid.split("::", 1)[0])
                    by_suite.setdefault(suite, {})[nodeid] = {"outcome": "passed", **entry}
                for suite, results in sorted(by_suite.items()):
                    run_id = run.stem if len(by_suite) == 1 else f"{run.stem}-{slug(suite)}"
                    check_run_id(run_id)
                    record = dict(data, format=FORMAT, id=run_id, suite=suite, results=results)
                    folder = gpu / slug(suite)
                    target = folder / "runs" / f"{run_id}.json"
                    check_record(record, target)
                    _atomic_write(target, json.dumps(record, indent=2, sort_keys=True) + "\n")
                    lines.append(f"wrote {target}")
                    if run.stem == old_accepted:
                        _atomic_write(folder / "accepted", run_id + "\n")
                        lines.append(f"wrote {folder / 'accepted'} ({run_id})")
                run.unlink()
                lines.append(f"removed {run}")
            if pointer.is_file():
                pointer.unlink()
                lines.append(f"removed {pointer}")
            try:
                (gpu / "runs").rmdir()
            except OSError:
                pass  # not empty (a suite named "runs") or already gone
        return lines


def failed_checks(record: Mapping[str, Any]) -> list[str]:
    """Node ids of the checks in a run that did not pass (failed or errored)."""
    return sorted(
        nodeid
        for nodeid, entry in record["results"].items()
        if entry.get("outcome") not in ("passed", "skipped")
    )
