"""The runner-pool file ``gpufit-runners.yaml``: runner classes, each a kind of self-hosted
runner (labels, cards, driver, shards), and how checks are placed on them.

Every field is declared here (``RUNNER_CLASS`` and ``POOL``, records of
``pytest_gpufit.declared``) and checked with the file and line of a bad one; ``json_schema``
turns the same records into the shipped JSON Schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from pytest_gpufit.declared.records import Field, Record, Wording, closest, line_of
from pytest_gpufit.declared.values import NESTED, choice, kind, matching
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.expect import KEYS as EXPECT_KEYS
from pytest_gpufit.expect import OPERATOR, parse_expect
from pytest_gpufit.hardware.catalog import catalog, catalog_gpu, parse_setup
from pytest_gpufit.settings import NAME_PATTERN  # the pattern --gpufit-runner is checked with

MAX_SHARDS = 256
PLACEMENTS = ("every", "one")
NO_GPUS = "none"  # ``gpus: none``: a CPU class
DRIVER = r"^\s*(>=|==)\s*[0-9][0-9.]*\s*$"
LABEL = r"^\S(.*\S)?$"  # non-empty, no space at either end


def _unknown_key(where: str, key: str, hint: str | None, accepted: str) -> tuple[str, str]:
    did_you_mean = f"did you mean {hint!r}? " if hint else ""
    return where or "pool", f"unknown key {key!r}; {did_you_mean}known keys: {accepted}"


def _missing_key(where: str, key: str, description: str) -> tuple[str, str]:
    return where or "pool", f"missing {key!r}: {description}"


# How the pool file words an unknown key and a missing one.
WORDING = Wording(_unknown_key, _missing_key)


@kind(
    {
        "type": "array",
        "minItems": 1,
        "uniqueItems": True,
        "items": {"type": "string", "minLength": 1, "pattern": LABEL},
    }
)
def _labels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise GpufitError(
            f"expected a list of runner labels, e.g. [self-hosted, linux, gpu, h100], got {value!r}"
        )
    for label in value:
        if not isinstance(label, str) or not re.fullmatch(LABEL, label):
            raise GpufitError(f"each label must be non-empty text, got {label!r}")
    if len(set(value)) != len(value):
        raise GpufitError(f"a label is repeated in {value!r}")
    return tuple(value)


def _setup_schema() -> dict[str, Any]:
    ids = "|".join(sorted(catalog()))
    count = r"(([1-9][0-9]{0,2}|10[01][0-9]|102[0-4])\s*\*\s*)?"  # 1 to 1024, as the validator
    setup = rf"^\s*(none|{count}({ids})\s*(,\s*{count}({ids})\s*)*)\s*$"  # none: a CPU class
    return {"type": "string", "pattern": setup}


@kind(_setup_schema)
def _gpus(value: Any) -> str:
    """As written; ``_runner`` expands it with the catalog (``parse_setup``)."""
    if not isinstance(value, str):
        raise GpufitError(
            f"expected text such as 2*h100-sxm (or none for a CPU class), got {value!r}"
        )
    return value


def _driver_version(driver: str) -> str | None:
    """The version of a ``>=VERSION`` or ``==VERSION`` clause (None if it is not one)."""
    return driver.strip()[2:].strip() if re.fullmatch(DRIVER, driver) else None


@kind({"type": "string", "pattern": DRIVER})
def _driver(value: Any) -> str | None:
    if value is None:
        return None  # ``driver:`` left empty: no promise, as if absent
    version = _driver_version(value) if isinstance(value, str) else None
    try:
        Version(version or "")
    except InvalidVersion:
        raise GpufitError(
            f"expected '>=VERSION' or '==VERSION' in quotes, e.g. '>=570', got {value!r}"
        ) from None
    return str(value)


@kind({"type": "integer", "minimum": 1, "maximum": MAX_SHARDS})
def _shards(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SHARDS:
        raise GpufitError(f"expected a whole number of jobs from 1 to {MAX_SHARDS}, got {value!r}")
    return value


# --gpufit-expect's grammar, as far as a pattern goes (``parse_expect`` checks the values)
_CLAUSE = rf"\s*({'|'.join(EXPECT_KEYS)})\s*{OPERATOR}\s*[^,\s][^,]*"


@kind({"type": "string", "pattern": rf"^{_CLAUSE}(,({_CLAUSE})?)*$"})
def _expect(value: Any) -> str | None:
    """As written; ``_runner`` reads it with ``parse_expect``."""
    if value is not None and not isinstance(value, str):
        raise GpufitError(f"expected text such as 'name~H100', got {value!r}")
    return value  # None: ``expect:`` left empty, as if absent


RUNNER_CLASS = Record(
    {
        "name": Field(
            matching(NAME_PATTERN, "a name of letters, digits, '.', '_' or '-' (at most 63)"),
            required=True,
            description="the class's name, used by --gpufit-runner (letters, digits, . _ -)",
        ),
        "labels": Field(
            _labels, required=True, description="the runs-on labels of its self-hosted runners"
        ),
        "gpus": Field(
            _gpus,
            required=True,
            description="its cards as for --gpufit-simulate: ID[,ID...] or N*ID, catalog ids; "
            "or none: a CPU class, which takes the checks that need no GPU",
        ),
        "driver": Field(
            _driver,
            description="the NVIDIA driver its runners have at least: '>=570' or '==570.86'",
        ),
        "shards": Field(
            _shards,
            default=1,
            description=f"jobs the class's checks are split into (pytest-split), 1 to {MAX_SHARDS}",
        ),
        "expect": Field(
            _expect,
            description="clauses of --gpufit-expect that replace the derived ones of the same "
            "key (e.g. 'name~RTX PRO 6000' where editions differ in name)",
        ),
    },
    WORDING,
)
POOL = Record(
    {
        "runners": Field(
            NESTED, required=True, description="the runner classes, in order of preference"
        ),
        "placement": Field(
            choice(PLACEMENTS, "every or one"),
            default="every",
            schema_default=True,
            description="every (default): every class that can run a gated check runs it (one "
            "gate per card model); one: only the first class that can",
        ),
    },
    WORDING,
)


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
        return _driver_version(self.driver) if self.driver else None


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
        close = closest(name, [r.name for r in self.runners])
        hint = f"; did you mean {close!r}?" if close else ""
        raise GpufitError(
            f"{what}={name!r}: {self.path}:{self.line}: runners: no class {name!r} "
            f"(it has {names}){hint}"
        )


def _runner(path: Path, index: int, entry: Any) -> RunnerClass:
    what = f"runners[{index}]"
    if not isinstance(entry, dict):
        raise GpufitError(
            f"{path}: {what}: expected a mapping with name, labels, gpus, got {entry!r}"
        )
    values = RUNNER_CLASS.read(entry, path, what)

    def at(key: str) -> str:
        return f"{path}:{line_of(entry, key)}: {what}.{key}"

    gpus = values["gpus"]
    cpu = gpus.strip() == NO_GPUS
    card_ids = () if cpu else tuple(parse_setup(gpus, at("gpus")))
    driver = values.get("driver")
    if driver is not None and cpu:
        raise GpufitError(
            f"{at('driver')}: a CPU class (gpus: none) has no NVIDIA driver to promise; "
            "drop driver:"
        )
    override = values.get("expect")
    if override is not None:
        parse_expect(override, at("expect"))
    return RunnerClass(
        name=values["name"],
        labels=values["labels"],
        gpus=gpus,
        card_ids=card_ids,
        driver=driver,
        shards=values["shards"],
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
    values = POOL.read(data, path)
    entries = values["runners"]
    if not isinstance(entries, list) or not entries:
        raise GpufitError(
            f"{path}:{line_of(data, 'runners')}: runners: expected a non-empty list of runner "
            f"classes, got {entries!r}"
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
    return Pool(tuple(runners), values["placement"], str(path), line)


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
