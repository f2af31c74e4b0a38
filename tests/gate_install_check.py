"""A pytest plugin for ``tests/test_gate_install.py``, loaded with ``-p gate_install_check``
inside the fresh virtual environment the gate workflow's install lines made.

After collection it asks, for every suite check a gate job keeps, what its run would ask
first: the backend's imports (a missing extra is a ``MissingExtra``, a failure under
``--gpufit-on-missing=fail``) and the server program a launched target starts. It prints one
``gate-install:`` line per problem and one summary line; it imports only what a check would.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from pathlib import Path

import pytest


def launched_program(command: tuple[str, ...]) -> list[str]:
    """The server's own command words: ``sh -c 'exec X ...'`` is X ...; ``{python}`` is this
    interpreter.

    >>> launched_program(("sh", "-c", 'exec vllm serve "$M/q" --port {port}'))[:2]
    ['vllm', 'serve']
    """
    words = list(command)
    if len(words) >= 3 and Path(words[0]).name in ("sh", "bash") and words[1] == "-c":
        words = shlex.split(words[2])
        if words and words[0] == "exec":
            words = words[1:]
    return [sys.executable if w == "{python}" else w for w in words]


def program_problem(words: list[str]) -> str | None:
    """Why the launched server could not start in this environment, or None."""
    if not words:
        return "an empty launch command"
    if words[0] == sys.executable and len(words) > 2 and words[1] == "-m":
        module = words[2]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"{module} is not installed"
        if module.startswith("transformers.") and "serve" in words:
            from transformers.utils.import_utils import is_serve_available

            if not is_serve_available():
                return "transformers serve needs transformers[serving] (fastapi, uvicorn, ...)"
        return None
    if shutil.which(words[0]) is None:
        return f"{words[0]} is not on PATH"
    return None


class GateInstallCheck:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked = 0

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from pytest_gpufit.backends import MissingExtra, load_backend
        from pytest_gpufit.suites.items import CheckItem

        for item in session.items:
            if not isinstance(item, CheckItem):
                continue
            self.checked += 1
            try:
                load_backend(item.target.backend)
            except MissingExtra as error:
                self.problems.append(f"{item.nodeid}: {error}")
            if item.target.launch is not None:
                problem = program_problem(launched_program(item.target.launch.command))
                if problem is not None:
                    self.problems.append(f"{item.nodeid}: launch: {problem}")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for problem in self.problems:
            terminalreporter.write_line(f"gate-install: {problem}")
        terminalreporter.write_line(
            f"gate-install: {self.checked} suite checks, {len(self.problems)} problem(s)"
        )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(GateInstallCheck(), "gate-install-check")
