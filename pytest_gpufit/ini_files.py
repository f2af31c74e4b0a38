"""The gpufit settings a pytest session started here would have, for the ``gpufit`` command.

The command has no pytest session, so it asks pytest rather than finding the configuration
file itself: ``pytest.main`` runs with a small plugin that reads the configuration as soon as
pytest has resolved it (rootdir, configuration file, ``-o`` overrides, ``PYTEST_ADDOPTS`` and
the file's ``addopts``) and stops it there, before any ``conftest.py`` or test is imported. So
``gpufit baseline`` reads the file pytest reads, in every form the installed pytest knows
(pytest 9 adds ``pytest.toml``, ``.pytest.toml`` and ``[tool.pytest]`` to ``pytest.ini``,
``pyproject.toml``, ``tox.ini`` and ``setup.cfg``), with the plugin's own precedence.

Only public pytest API is used: ``pytest.main``, a plugin's ``pytest_load_initial_conftests``
hook, and ``pytest.Config`` (``rootpath``, ``inipath``, ``getini``). pytest's own resolver
(``_pytest.config.findpaths.determine_setup``) is private and changed its signature between
pytest 7, 8 and 9.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.settings import Settings, ini_reader, resolve


@dataclass(frozen=True)
class PytestSettings:
    """The rootdir and configuration file pytest found, and gpufit's settings resolved there."""

    rootdir: Path
    inipath: Path | None
    settings: Settings


class _Read(Exception):  # noqa: N818 - not an error: it carries the result out of pytest.main
    def __init__(self, found: PytestSettings | GpufitError) -> None:
        super().__init__()
        self.found = found


class _Reader:
    """A pytest plugin that reads the settings once pytest has parsed its configuration."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_load_initial_conftests(self, early_config: pytest.Config) -> None:
        # The first hook after the configuration is read and the plugins are loaded, before
        # pytest imports any conftest.py: read, then stop pytest by raising.
        namespace = early_config.known_args_namespace
        try:
            early_config.getini("gpufit_baseline_dir")
        except ValueError:
            raise _Read(
                GpufitError(
                    "the gpufit plugin is not active in a pytest session started here "
                    "(-p no:gpufit in PYTEST_ADDOPTS or the ini addopts, or "
                    "PYTEST_DISABLE_PLUGIN_AUTOLOAD?), so pytest uses no gpufit settings; "
                    "name the baseline folder with --dir"
                )
            ) from None
        try:
            settings = resolve(
                lambda name: getattr(namespace, "gpufit_" + name, None), ini_reader(early_config)
            )
        except GpufitError as error:
            raise _Read(error) from None
        raise _Read(PytestSettings(early_config.rootpath, early_config.inipath, settings))


def pytest_settings() -> PytestSettings:
    """What a pytest session started in the current folder would find (see the module)."""
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            # Nothing runs: no plugin module needs assertion rewriting (~0.8 s saved).
            code = pytest.main(["--assert=plain"], plugins=[_Reader()])
    except _Read as read:
        if isinstance(read.found, GpufitError):
            raise read.found from None
        return read.found
    except ValueError as error:
        # pytest splits PYTEST_ADDOPTS like a shell line before it reads any file, and lets
        # shlex's error out as a traceback (an ini file's addopts it reports itself).
        addopts = os.environ.get("PYTEST_ADDOPTS")
        where = f"PYTEST_ADDOPTS={addopts!r}: " if addopts else ""
        raise GpufitError(
            f"{where}pytest stopped before reading its configuration: {error}"
        ) from None
    raise GpufitError(_failure(output.getvalue(), int(code)))


def _failure(output: str, code: int) -> str:
    """pytest's own message when it stopped before the configuration was read.

    >>> _failure("ERROR: /p/pyproject.toml: Expected ']' (at line 1)\\n", 4)
    "/p/pyproject.toml: cannot read this configuration file: Expected ']' (at line 1)"
    """
    text = output.strip().removeprefix("ERROR:").strip()
    match = re.match(r"(\S+\.(?:toml|ini|cfg)): (.*)", text, re.DOTALL)
    if match:
        return f"{match[1]}: cannot read this configuration file: {match[2]}"
    return f"pytest stopped before reading its configuration (exit {code}): {text or 'no output'}"
