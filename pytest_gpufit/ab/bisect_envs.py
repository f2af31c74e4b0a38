"""The environments ``gpufit bisect`` measures: one virtual environment per requirement set,
built with uv (``uv venv``, then ``uv pip install --python VENV/bin/python``) from the registry
or wheel folders (``--find-links``, ``--no-index``, ``--offline``), pip only where uv is absent.

Each environment is the set's pins plus pytest-gpufit itself: a wheel of this checkout when
gpufit runs from one (the environments run the code that bisects), else the same version of
pytest-gpufit from the package sources. Environments are kept under the work folder by the
digest of what went into them (``WORK/envs/<digest>``), so a second bisect over the same sets
(with more ``--rounds``, say) builds nothing; a half-built one is removed and built again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_gpufit.ab.bisect import SELF, summary
from pytest_gpufit.ab.child import run_child
from pytest_gpufit.errors import GpufitError

READY = "gpufit-bisect.json"  # written last: an environment without it is half-built
FORMAT = 1  # bump when what goes into an environment changes


class InstallFailed(GpufitError):
    """A requirement set that does not resolve or install; the message is the installer's."""


def find_uv() -> str | None:
    """uv on PATH, beside this interpreter (a venv's bin not on PATH), or from its package."""
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        import uv  # late: only bisect needs it

        path: str = uv.find_uv_bin()
        return path
    except (ImportError, FileNotFoundError):
        return None


def self_requirement(work: Path, uv: str | None) -> list[str]:
    """How pytest-gpufit goes into every environment: from a source checkout, a wheel of it
    built once per source digest (an editable install would be rebuilt for every environment,
    about 2 s each); else the running version by name, from the package sources."""
    root = Path(__file__).resolve().parent.parent.parent
    pyproject = root / "pyproject.toml"
    if not (pyproject.is_file() and f'name = "{SELF}"' in pyproject.read_text(encoding="utf-8")):
        return [f"{SELF}=={importlib.metadata.version(SELF)}"]
    folder = work / "gpufit" / source_digest(root)
    built = sorted(folder.glob("pytest_gpufit-*.whl"))
    if built:
        return [str(built[0])]
    partial = folder.with_name(f"{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    if uv:
        command = [uv, "build", "--quiet", "--wheel", "--out-dir", str(partial), str(root)]
    else:
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        command += ["--wheel-dir", str(partial), str(root)]
    done = run_child(command)
    if done.returncode != 0:
        said = summary(done.stderr or done.stdout, 600)
        raise GpufitError(f"building the wheel of {SELF} from {root} failed: {said}")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return [str(next(folder.glob("pytest_gpufit-*.whl")))]


def source_digest(root: Path) -> str:
    """The digest of what goes into pytest-gpufit's wheel: the package's files and the
    project's metadata."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", root / "README.md"]
    files += [p for p in (root / "pytest_gpufit").rglob("*") if "__pycache__" not in p.parts]
    for path in sorted(p for p in files if p.is_file()):
        digest.update(f"{path.relative_to(root)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Builder:
    """Builds and caches the environments of one bisect."""

    work: Path
    base_python: str
    uv: str | None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    offline: bool = False
    gpufit: tuple[str, ...] = ()  # self_requirement()

    @property
    def tool(self) -> str:
        return "uv" if self.uv else "pip (uv not found: slower)"

    def _source_args(self) -> list[str]:
        args = [a for d in self.find_links for a in ("--find-links", d)]
        if self.no_index or (self.offline and not self.uv):  # pip has no cache-only mode
            args.append("--no-index")
        if self.offline and self.uv:
            args.append("--offline")
        return args

    def digest(self, lines: Sequence[str]) -> str:
        facts = {
            "format": FORMAT,
            "lines": sorted(lines),
            "python": os.path.realpath(self.base_python),
            "gpufit": list(self.gpufit),
            "sources": self._source_args(),
            "tool": "uv" if self.uv else "pip",
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]

    def python(self, lines: Sequence[str]) -> str:
        """The interpreter of an environment holding exactly ``lines`` and pytest-gpufit."""
        folder = self.work / "envs" / self.digest(lines)
        python = folder / "bin" / "python"
        if (folder / READY).is_file() and python.exists():
            return str(python)
        if folder.exists():
            shutil.rmtree(folder)  # half-built by an interrupted run
        folder.parent.mkdir(parents=True, exist_ok=True)
        requirements = folder.parent / f"{folder.name}.txt"
        requirements.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        try:
            if self.uv:
                self._run([self.uv, "venv", "--quiet", "--python", self.base_python, str(folder)])
                install = [self.uv, "pip", "install", "--quiet", "--python", str(python)]
            else:
                self._run([self.base_python, "-m", "venv", str(folder)])
                install = [str(python), "-m", "pip", "install", "--quiet"]
            self._run([*install, *self._source_args(), "-r", str(requirements), *self.gpufit])
        except InstallFailed:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        record = {"requirements": list(lines), "gpufit": list(self.gpufit), "tool": self.tool}
        (folder / READY).write_text(json.dumps(record, indent=1), encoding="utf-8")
        return str(python)

    def resolves(self, lines: Sequence[str]) -> str | None:
        """None when ``lines`` resolve together, else the resolver's message. With uv a
        resolution only (``uv pip compile``: nothing is installed); with pip an install."""
        if not self.uv:
            try:
                self.python(lines)
            except InstallFailed as error:
                return str(error)
            return None
        command = [self.uv, "pip", "compile", "--quiet", "--no-header", "--python"]
        command += [self.base_python, *self._source_args(), "-"]
        done = run_child(command, input_text="\n".join(lines))
        return None if done.returncode == 0 else (done.stderr or done.stdout).strip()

    def _run(self, command: list[str]) -> None:
        done = run_child(command)
        if done.returncode != 0:
            text = (done.stderr or done.stdout).strip()
            raise InstallFailed(f"{Path(command[0]).name} failed: {text}")


def freeze(python: str, uv: str | None) -> str:
    """``pip freeze`` of an interpreter (uv's when there is uv: the venv needs no pip)."""
    if not Path(python).exists():
        raise GpufitError(f"--a-python {python}: no such interpreter")
    command = [uv, "pip", "freeze", "--python", python] if uv else [python, "-m", "pip", "freeze"]
    done = run_child(command)
    if done.returncode != 0:
        raise GpufitError(f"--a-python {python}: freeze failed: {summary(done.stderr)}")
    return done.stdout
