"""``--gpufit-expect``: what a runner must have, checked once at session start."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.dtypes import canonical_dtype, parse_compute_capability
from pytest_gpufit.hardware.records import Gpu, Inventory
from pytest_gpufit.numbers import plural
from pytest_gpufit.units import format_gb, parse_size

KEYS = ("count", "vram", "free", "name", "cc", "dtype", "driver", "cuda", "torch")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
OPERATOR = r"(>=|<=|==|!=|~|>|<|=)"  # also the runner pool's JSON Schema of an expect
_CLAUSE = re.compile(rf"^\s*([a-z]+)\s*{OPERATOR}\s*(.+?)\s*$")
_COUNT = re.compile(r"^(?:[0-9]{1,3}|10[01][0-9]|102[0-4])$")
_USAGE = (
    f"write KEY OP VALUE clauses separated by commas, KEY one of {', '.join(KEYS)}, "
    "OP one of >= <= == != > < (and ~ for 'contains' with name), e.g. "
    "'count>=1,vram>=90GB,name~RTX PRO 6000,cc>=12.0,driver>=570'"
)


@dataclass(frozen=True)
class Clause:
    key: str
    op: str
    value: Any
    text: str


def parse_expect(expression: str, what: str = "--gpufit-expect") -> tuple[Clause, ...]:
    """Parse an expectation; a malformed clause is a usage error naming it.

    >>> [c.key for c in parse_expect("count>=1, vram>=90GB, name~RTX PRO 6000")]
    ['count', 'vram', 'name']
    """
    clauses = []
    for text in (t.strip() for t in expression.split(",")):
        if not text:
            continue
        match = _CLAUSE.match(text)
        if not match or match.group(1) not in KEYS:
            raise GpufitError(f"{what}: bad clause {text!r}; {_USAGE}")
        key, op, raw = match.groups()
        if (op == "~" and key != "name") or (key == "name" and op not in ("~", "=", "==", "!=")):
            raise GpufitError(f"{what}: bad operator in {text!r}; {_USAGE}")
        try:
            value: Any
            if key == "count":
                if not _COUNT.match(raw):  # ASCII: '²'.isdigit() is True, int('²') fails
                    raise GpufitError(f"a whole number of GPUs (0 to 1024), got {raw!r}")
                value = int(raw)
            elif key in ("vram", "free"):
                value = parse_size(raw, key)
            elif key == "cc":
                value = parse_compute_capability(raw)
            elif key == "dtype":
                if op not in ("=", "=="):
                    raise GpufitError("dtype takes '=' (every GPU runs it natively)")
                value = canonical_dtype(raw)
            elif key in ("driver", "cuda", "torch"):
                value = Version(raw)
            else:
                value = raw
        except (GpufitError, InvalidVersion) as error:
            raise GpufitError(f"{what}: bad value in {text!r}: {error}") from None
        clauses.append(Clause(key, op, value, text))
    if not clauses:
        raise GpufitError(f"{what}: empty expression; {_USAGE}")
    return tuple(clauses)


def _device_value(clause: Clause, gpu: Gpu) -> tuple[Any, str]:
    if clause.key == "vram":
        return gpu.memory_total_bytes, format_gb(gpu.memory_total_bytes)
    if clause.key == "free":
        free = gpu.memory_free_bytes
        return free, "unknown free memory" if free is None else f"{format_gb(free)} free"
    if clause.key == "cc":
        return gpu.compute_capability, f"CC {gpu.cc_text}"
    if clause.key == "dtype":
        return gpu.native_dtypes, "native: " + (", ".join(gpu.native_dtypes) or "none known")
    return gpu.name, repr(gpu.name)


def _holds(clause: Clause, have: Any) -> bool:
    if have is None:
        return False
    if clause.key == "name":
        if clause.op == "~":
            return str(clause.value).lower() in str(have).lower()
        return _OPS[clause.op](have, clause.value)
    if clause.key == "dtype":
        return bool(clause.value in have)
    return _OPS[clause.op](have, clause.value)


def check_expect(clauses: tuple[Clause, ...], inventory: Inventory) -> list[str]:
    """Every failed clause, each with what the machine has; empty when all hold."""
    failed = []
    env = inventory.environment
    versions = {
        "driver": env.driver_version,
        "cuda": env.cuda_driver_version,
        "torch": env.torch_version,
    }
    for clause in clauses:
        if clause.key == "count":
            if not _holds(clause, len(inventory.gpus)):
                extra = f" ({inventory.reason})" if inventory.reason else ""
                failed.append(f"{clause.text}: found {plural(len(inventory.gpus), 'GPU')}{extra}")
        elif clause.key in versions:
            raw = versions[clause.key]
            try:
                have = Version(raw) if raw else None
            except InvalidVersion:
                have = None
            if not _holds(clause, have):
                failed.append(f"{clause.text}: this machine has {raw or 'none'}")
        elif not inventory.gpus:
            failed.append(f"{clause.text}: no GPU ({inventory.reason or 'none found'})")
        else:
            bad = []
            for gpu in inventory.gpus:
                have, shown = _device_value(clause, gpu)
                if not _holds(clause, have):
                    bad.append(f"{gpu.label} has {shown}")
            if bad:
                failed.append(f"{clause.text}: {', '.join(bad)}")
    return failed
