"""The runner-pool file ``gpufit-runners.yaml``: runner classes, each a kind of self-hosted
runner (labels, cards, driver, shards), and how checks are placed on them.

Every field is checked here, with the file and line of a bad one; ``json_schema`` turns the
same tables into the shipped JSON Schema.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.expect import KEYS as EXPECT_KEYS
from pytest_gpufit.expect import parse_expect
from pytest_gpufit.settings import NAME_PATTERN  # the pattern --gpufit-runner is checked with

MAX_SHARDS = 256
PLACEMENTS = ("every", "one")
# field -> (required, description); the validator and the JSON Schema both read this table.
CLASS_FIELDS: dict[str, tuple[bool, str]] = {
    "name": (True, "the class's name, used by --gpufit-runner (letters, digits, . _ -)"),
    "labels": (True, "the runs-on labels of its self-hosted runners"),
    "gpus": (
        True,
        "its cards as for --gpufit-simulate: ID[,ID...] or N*ID, catalog ids; or none: a CPU "
        "class, which takes the checks that need no GPU",
    ),
    "driver": (False, "the NVIDIA driver its runners have at least: '>=570' or '==570.86'"),
    "shards": (False, f"jobs the class's checks are split into (pytest-split), 1 to {MAX_SHARDS}"),
    "expect": (
        False,
        "clauses of --gpufit-expect that replace the derived ones of the same key "
        "(e.g. 'name~RTX PRO 6000' where editions differ in name)",
    ),
}
POOL_FIELDS: dict[str, tuple[bool, str]] = {
    "runners": (True, "the runner classes, in order of preference"),
    "placement": (
        False,
        "every (default): every class that can run a gated check runs it (one gate per card "
        "model); one: only the first class that can",
    ),
}
_DRIVER = re.compile(r"^\s*(>=|==)\s*([0-9][0-9.]*)\s*$")
NO_GPUS = "none"  # ``gpus: none``: a CPU class


@dataclass(frozen=True)
class RunnerClass:
    """One class of runners: all its machines have the same cards and labels."""

    name: str
    labels: tuple[str, ...]
    gpus: str  # as written, e.g. "2*h100-sxm"
    card_ids: tuple[str, ...]  # one catalog id per GPU
    driver: str | None = None  # ">=570" or "==570.86"
    shards: int = 1
    expect_override: str | None = None
    line: int = 0

    @property
    def has_gpus(self) -> bool:
        """False for a CPU class (``gpus: none``)."""
        return bool(self.card_ids)

    @property
    def driver_floor(self) -> str | None:
        """The lowest driver version the class promises (planning judges with it)."""
        match = _DRIVER.match(self.driver) if self.driver else None
        return match.group(2) if match else None


@dataclass(frozen=True)
class Pool:
    runners: tuple[RunnerClass, ...]
    placement: str = "every"
    path: str = ""
    line: int = 0  # of the `runners:` key

    @property
    def ungated_home(self) -> RunnerClass:
        """Where an item that needs no GPU runs once: the first CPU class, else the first."""
        return next((r for r in self.runners if not r.has_gpus), self.runners[0])

    @property
    def orphan_home(self) -> RunnerClass:
        """Where a gate job keeps an orphaned gate (to fail it with its reason): the first
        class with GPUs, whose reason names the card, else the first class."""
        return next((r for r in self.runners if r.has_gpus), self.runners[0])

    def get(self, name: str, what: str = "--gpufit-runner") -> RunnerClass:
        """The class called ``name``; an unknown name is an error naming the file's classes."""
        for runner in self.runners:
            if runner.name == name:
                return runner
        names = ", ".join(r.name for r in self.runners)
        close = difflib.get_close_matches(name, [r.name for r in self.runners], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise GpufitError(
            f"{what}={name!r}: {self.path}:{self.line}: runners: no class {name!r} "
            f"(it has {names}){hint}"
        )


def _where(path: Path, mapping: Any, key: str | None = None) -> str:
    lines = getattr(mapping, "key_lines", {})
    line = lines.get(key) if key else None
    return f"{path}:{line or getattr(mapping, 'line', 0) or 1}"


def _unknown_keys(path: Path, mapping: Any, fields: dict[str, Any], what: str) -> None:
    for key in mapping:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise GpufitError(
                f"{_where(path, mapping, key)}: {what}: unknown key {key!r}; {hint}"
                f"known keys: {', '.join(fields)}"
            )


def _runner(path: Path, index: int, entry: Any) -> RunnerClass:
    from pytest_gpufit.hardware.catalog import parse_setup  # late: reads the catalog

    what = f"runners[{index}]"
    if not isinstance(entry, dict):
        raise GpufitError(
            f"{path}: {what}: expected a mapping with name, labels, gpus, got {entry!r}"
        )
    _unknown_keys(path, entry, CLASS_FIELDS, what)
    for key, (required, meaning) in CLASS_FIELDS.items():
        if required and key not in entry:
            raise GpufitError(f"{_where(path, entry)}: {what}: missing {key!r}: {meaning}")

    def at(key: str) -> str:
        return f"{_where(path, entry, key)}: {what}.{key}"

    name = entry["name"]
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise GpufitError(
            f"{at('name')}: expected a name of letters, digits, '.', '_' or '-' (at most 63), "
            f"got {name!r}"
        )
    labels = entry["labels"]
    if not isinstance(labels, list) or not labels:
        raise GpufitError(
            f"{at('labels')}: expected a list of runner labels, e.g. [self-hosted, linux, gpu, "
            f"h100], got {labels!r}"
        )
    for label in labels:
        if not isinstance(label, str) or not label.strip() or label != label.strip():
            raise GpufitError(f"{at('labels')}: each label must be non-empty text, got {label!r}")
    if len(set(labels)) != len(labels):
        raise GpufitError(f"{at('labels')}: a label is repeated in {labels!r}")
    gpus = entry["gpus"]
    if not isinstance(gpus, str):
        raise GpufitError(
            f"{at('gpus')}: expected text such as 2*h100-sxm (or none for a CPU class), "
            f"got {gpus!r}"
        )
    cpu = gpus.strip() == NO_GPUS
    card_ids = () if cpu else tuple(parse_setup(gpus, at("gpus")))
    driver = entry.get("driver")
    if driver is not None and cpu:
        raise GpufitError(
            f"{at('driver')}: a CPU class (gpus: none) has no NVIDIA driver to promise; "
            "drop driver:"
        )
    if driver is not None:
        match = _DRIVER.match(driver) if isinstance(driver, str) else None
        valid = False
        if match:
            try:
                Version(match.group(2))
                valid = True
            except InvalidVersion:
                pass
        if not valid:
            raise GpufitError(
                f"{at('driver')}: expected '>=VERSION' or '==VERSION' in quotes, e.g. "
                f"'>=570', got {driver!r}"
            )
    shards = entry.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise GpufitError(
            f"{at('shards')}: expected a whole number of jobs from 1 to {MAX_SHARDS}, "
            f"got {shards!r}"
        )
    override = entry.get("expect")
    if override is not None:
        if not isinstance(override, str):
            raise GpufitError(
                f"{at('expect')}: expected text such as 'name~H100', got {override!r}"
            )
        parse_expect(override, at("expect"))
    return RunnerClass(
        name=name,
        labels=tuple(labels),
        gpus=gpus,
        card_ids=card_ids,
        driver=driver,
        shards=shards,
        expect_override=override,
        line=getattr(entry, "line", 0),
    )


def parse_pool(data: Any, path: Path) -> Pool:
    """Check a loaded pool file (a ``Located`` mapping from ``yaml_lines``)."""
    if not isinstance(data, dict):
        raise GpufitError(
            f"{path}: expected a mapping with 'runners:' (a list of runner classes), got "
            f"{type(data).__name__ if data is not None else 'an empty file'}"
        )
    _unknown_keys(path, data, POOL_FIELDS, "pool")
    entries = data.get("runners")
    if not isinstance(entries, list) or not entries:
        raise GpufitError(
            f"{_where(path, data, 'runners')}: runners: expected a non-empty list of runner "
            f"classes, got {entries!r}"
        )
    placement = data.get("placement", "every")
    if placement not in PLACEMENTS:
        raise GpufitError(
            f"{_where(path, data, 'placement')}: placement: expected every or one, got "
            f"{placement!r}"
        )
    runners: list[RunnerClass] = []
    seen: dict[str, RunnerClass] = {}
    for index, entry in enumerate(entries):
        runner = _runner(path, index, entry)
        # Case-blind: the class names artifacts, concurrency groups and durations files,
        # which GitHub (and case-blind file systems) do not tell apart by case.
        first = seen.get(runner.name.casefold())
        if first is not None:
            raise GpufitError(
                f"{path}:{runner.line}: runners[{index}].name: duplicate class name "
                f"{runner.name!r} (first at line {first.line}, {first.name!r}); give each "
                "class its own name (names differing only in case count as the same)"
            )
        seen[runner.name.casefold()] = runner
        runners.append(runner)
    line = getattr(data, "key_lines", {}).get("runners", 1)
    return Pool(tuple(runners), placement, str(path), line)


def load_pool(path: Path, option: str = "--gpufit-runners / GPUFIT_RUNNERS") -> Pool:
    """Read and check a pool file; every problem is a ``GpufitError`` naming file and line.
    ``option`` is what points at the file where the caller reads it (named when it is missing)."""
    from pytest_gpufit.yaml_lines import load_yaml  # late: YAML only when asked

    if not path.is_file():
        raise GpufitError(
            f"{path}: no such runner-pool file; write one (docs/ci.md, 'The runner-pool file') "
            f"or point {option} at it"
        )
    return parse_pool(load_yaml(path), path)


def _floor_gb(n_bytes: int) -> int:
    # NVML's total differs a little between editions and ECC modes; 5% below the catalog
    # figure still tells an 80 GB card from a 96 GB one, and the name clause names the model.
    return int(n_bytes * 0.95 / 10**9)


def derived_expect(runner: RunnerClass) -> str:
    """The ``--gpufit-expect`` of a class: count, memory, name, compute capability, driver.
    A CPU class promises no GPU (``count>=0``, which every machine meets), and its own
    ``expect`` clauses, if any.

    >>> r = RunnerClass("h", ("self-hosted",), "2*h100-sxm", ("h100-sxm", "h100-sxm"), ">=550")
    >>> derived_expect(r)
    'count>=2,vram>=81GB,name~NVIDIA H100 80GB HBM3,cc>=9.0,driver>=550'
    >>> derived_expect(RunnerClass("cpu", ("ubuntu-latest",), "none", ()))
    'count>=0'
    """
    from pytest_gpufit.hardware.catalog import catalog_gpu  # late: reads the catalog

    gpus = [catalog_gpu(card) for card in runner.card_ids]
    clauses: dict[str, list[str]] = {"count": [f"count>={len(gpus)}"]}
    if gpus:
        clauses["vram"] = [f"vram>={min(_floor_gb(g.memory_total_bytes) for g in gpus)}GB"]
    names = {g.name for g in gpus}
    if len(names) == 1:
        clauses["name"] = [f"name~{names.pop()}"]
    ccs = [g.compute_capability for g in gpus]
    if ccs and all(cc is not None for cc in ccs):
        low = min(cc for cc in ccs if cc is not None)
        clauses["cc"] = [f"cc>={low[0]}.{low[1]}"]
    if runner.driver_floor:
        clauses["driver"] = [f"driver>={runner.driver_floor}"]
    if runner.expect_override:
        given: dict[str, list[str]] = {}
        for clause in parse_expect(runner.expect_override, runner.name):
            given.setdefault(clause.key, []).append(clause.text)
        clauses.update(given)  # a key given replaces every derived clause of that key
    return ",".join(text for key in EXPECT_KEYS for text in clauses.get(key, []))
