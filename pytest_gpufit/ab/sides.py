"""The two sides of an A/B: sets of ``KEY=VALUE`` variables, their interpreters, checked.

A side is what ``--a``/``--b`` give: ``python=PATH`` is the interpreter the suite runs under
(in a subprocess; a launch command's ``{python}`` is it too); any other ``KEY`` is substituted
as ``{KEY}`` into launch commands. A side without ``python=`` runs under the current
interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpufit.errors import GpufitError

KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
# {port}, {suite_dir} and {python} are filled by gpufit itself (python from the side's python=).
RESERVED = ("port", "suite_dir")
PROBE_TIMEOUT_S = 120.0

# Run under the side's interpreter: does it have pytest-gpufit, and what versions does it hold.
_PROBE = """
import importlib.metadata as md, json, os, platform, sys
out = {"python_version": platform.python_version(), "packages": {},
       "prefix": os.path.realpath(sys.prefix)}
try:
    import pytest_gpufit, pytest
except Exception as error:
    out["error"] = f"{type(error).__name__}: {error}"
for dist in md.distributions():
    name = (dist.metadata["Name"] or "").lower().replace("_", "-")
    if name and name not in out["packages"]:  # the first on sys.path is the one imported
        out["packages"][name] = dist.version
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Side:
    """One side of the A/B: its label, its variables as given, and what its interpreter holds."""

    label: str  # "A" or "B"
    vars: Mapping[str, str]  # as given on the command line (python= included when given)
    python: str  # the interpreter its runs use (python=, else the current one)
    python_version: str | None = None
    packages: Mapping[str, str] = field(default_factory=dict)  # every distribution installed
    # the environment the interpreter runs in (its sys.prefix, symlinks resolved): two paths
    # to one venv (bin/python and bin/python3, a symlinked venv folder) have the same prefix
    prefix: str | None = None

    @property
    def gpufit_version(self) -> str | None:
        """The pytest-gpufit version installed in the side's environment."""
        return self.packages.get("pytest-gpufit")

    @property
    def substitutions(self) -> dict[str, str]:
        """The ``{KEY}`` values for launch commands (``{python}`` is the run's interpreter)."""
        return {k: v for k, v in self.vars.items() if k != "python"}

    def to_dict(self) -> dict[str, Any]:
        return {"vars": dict(self.vars), "python": self.python}


def parse_vars(items: Sequence[str], option: str) -> dict[str, str]:
    """``["python=/v/bin/python", "image=x:1"]`` -> a mapping; bad items are errors.

    >>> parse_vars(["python=/v/bin/python", "image=vllm:0.8"], "--a")
    {'python': '/v/bin/python', 'image': 'vllm:0.8'}
    >>> parse_vars(["image"], "--b")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: --b image: expected KEY=VALUE, e.g. ...
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise GpufitError(
                f"{option} {item}: expected KEY=VALUE, e.g. {option} python=.venv-new/bin/python"
            )
        if not set(key) <= KEY_CHARS:
            raise GpufitError(
                f"{option} {item}: KEY {key!r} must be letters, digits and _ (it is written "
                "{KEY} in launch commands)"
            )
        if key in RESERVED:
            raise GpufitError(
                f"{option} {item}: {{{key}}} is filled by gpufit itself; choose another KEY"
            )
        if key in out:
            raise GpufitError(f"{option}: {key} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def _interpreter(raw: str, option: str) -> str:
    """The interpreter path as given (absolute, symlinks kept: a venv's python is a symlink to
    the same base interpreter as every other venv's, and the venv is what differs)."""
    path = os.path.abspath(os.path.expanduser(raw))
    if not os.path.exists(path):
        raise GpufitError(
            f"{option} python={raw}: no such file; give a venv's interpreter, e.g. "
            f"{option} python=.venv-new/bin/python"
        )
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise GpufitError(f"{option} python={raw}: not an executable file")
    return path


def probe(python: str, option: str) -> tuple[str | None, dict[str, str], str | None]:
    """(python version, package versions, environment prefix) of an interpreter; an error
    where it cannot run or lacks pytest-gpufit."""
    try:
        done = subprocess.run(
            [python, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GpufitError(f"{option} python={python}: cannot run it ({error})") from None
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (done.stderr or done.stdout).strip()[-300:]
        raise GpufitError(
            f"{option} python={python}: not a working Python interpreter (exit "
            f"{done.returncode}): {tail}"
        ) from None
    if "error" in data:
        raise GpufitError(
            f"{option} python={python} lacks pytest-gpufit ({data['error']}); install it into "
            f"that environment: {python} -m pip install pytest-gpufit (or uv pip install "
            f"--python {python} pytest-gpufit)"
        )
    return data.get("python_version"), dict(data.get("packages") or {}), data.get("prefix")


def make_side(label: str, items: Sequence[str], option: str) -> Side:
    """A side from its ``KEY=VALUE`` items, its interpreter checked and probed."""
    given = parse_vars(items, option)
    python = _interpreter(given["python"], option) if "python" in given else sys.executable
    version, packages, prefix = probe(python, option)
    return Side(label, given, python, version, packages, prefix)


def check_pair(a: Side, b: Side) -> None:
    """A equal to B is refused: same interpreter and same variables compare nothing.

    >>> s = Side("A", {"python": "/v/bin/python"}, "/v/bin/python")
    >>> check_pair(s, Side("B", {}, "/v/bin/python"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: --a and --b are the same environment (python /v/bin/...
    """
    same_env = a.python == b.python or (a.prefix is not None and a.prefix == b.prefix)
    if same_env and a.substitutions == b.substitutions:
        where = (
            a.python if a.python == b.python else f"{a.python} and {b.python} both run {a.prefix}"
        )
        others = ", ".join(f"{k}={v}" for k, v in sorted(a.substitutions.items()))
        raise GpufitError(
            f"--a and --b are the same environment (python {where}, "
            f"{others or 'no other variable'}); give B what changes, e.g. "
            "--b python=.venv-new/bin/python (for an A/A check of the noise, point --b at a "
            "copy of the venv)"
        )
    check_gpufit_versions(a, b)


def check_gpufit_versions(a: Side, b: Side) -> None:
    """Both sides must measure with the same pytest-gpufit: its checks are the instrument, and
    a change of the instrument would be judged as a change of the environment.

    >>> one = Side("A", {}, "/a", packages={"pytest-gpufit": "0.1.0"})
    >>> check_gpufit_versions(one, Side("B", {}, "/b", packages={"pytest-gpufit": "0.2.0"}))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: side A (python /a) has pytest-gpufit 0.1.0 and side B ...
    """
    va, vb = a.gpufit_version, b.gpufit_version
    if va != vb:
        raise GpufitError(
            f"side A (python {a.python}) has pytest-gpufit {va or 'none'} and side B (python "
            f"{b.python}) has {vb or 'none'}: the sides would be measured by different checks, "
            "and that difference judged as the environments'; install the same pytest-gpufit "
            f"into both ({b.python} -m pip install pytest-gpufit=={va})"
        )


def unused_keys(sides: Sequence[Side], commands: Sequence[Sequence[str]]) -> list[str]:
    """``KEY`` of a side that no launch command of the suite writes as ``{KEY}``.

    >>> s = Side("A", {"image": "x", "tag": "y"}, "/p")
    >>> unused_keys([s], [["docker", "run", "{image}"]])
    ['tag']
    """
    text = "\0".join(arg for command in commands for arg in command)
    keys = sorted({k for side in sides for k in side.substitutions})
    return [k for k in keys if "{" + k + "}" not in text]
