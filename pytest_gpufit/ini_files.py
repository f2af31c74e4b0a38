"""pytest's configuration file, found the way pytest finds it, for the ``gpufit`` command.

The plugin reads ini keys through ``pytest.Config.getini``; the command line has no pytest
session, so it finds the same file here: in the current folder and upward, the first of
``pytest.ini``, ``.pytest.ini``, ``pyproject.toml`` with ``[tool.pytest.ini_options]``,
``tox.ini`` with ``[pytest]`` and ``setup.cfg`` with ``[tool:pytest]``. Its folder is the
rootdir that relative settings (``gpufit_baseline_dir``) are read against, as in pytest.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gpufit.errors import GpufitError

# (file name, section); pyproject.toml is TOML, the rest INI.
CANDIDATES = (
    ("pytest.ini", "pytest"),
    (".pytest.ini", "pytest"),
    ("pyproject.toml", "tool.pytest.ini_options"),
    ("tox.ini", "pytest"),
    ("setup.cfg", "tool:pytest"),
)


@dataclass(frozen=True)
class IniFile:
    """The configuration file that applies (``path`` None: none found) and its rootdir."""

    rootdir: Path
    path: Path | None = None
    values: Mapping[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        return self.values.get(key)


def _section(path: Path, section: str) -> dict[str, str] | None:
    """The section's keys, or None when the file does not have it."""
    # Late: only the command line needs them. pytest itself depends on both (tomli < 3.11).
    import iniconfig

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(path.read_text("utf-8"))
            for part in section.split("."):
                data = data.get(part) if isinstance(data, dict) else None
            if not isinstance(data, dict):
                return None
            return {str(k): _text(v) for k, v in data.items()}
        ini = iniconfig.IniConfig(str(path))
        if section not in ini:
            return None
        return dict(ini[section].items())
    except (OSError, ValueError, iniconfig.ParseError) as error:  # ValueError: TOML, UTF-8
        raise GpufitError(f"{path}: cannot read this configuration file: {error}") from None


def _text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def find_ini(start: Path) -> IniFile:
    """The configuration file pytest would read when run in ``start``, and its rootdir."""
    start = Path(start).resolve()
    first_pyproject: Path | None = None
    for folder in (start, *start.parents):
        for name, section in CANDIDATES:
            path = folder / name
            if not path.is_file():
                continue
            values = _section(path, section)
            if values is not None or name in ("pytest.ini", ".pytest.ini"):
                return IniFile(folder, path, values or {})
            if name == "pyproject.toml" and first_pyproject is None:
                first_pyproject = path
    if first_pyproject is not None:  # pytest's fallback: a pyproject.toml marks the rootdir
        return IniFile(first_pyproject.parent, first_pyproject)
    return IniFile(start)
