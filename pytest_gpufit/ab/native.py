"""``pytest --gpufit-ab=ENV_A,ENV_B``: this pytest call conducts an A/B of two declared
environments, so a CI job that gates an upgrade is one pytest call.

The conducting process runs no test itself: its selection (the same arguments, less the A/B
options) runs in the two environments' own pytest sessions, interleaved, exactly as
``gpufit ab`` runs it; a test run in the conductor would measure neither environment. Its
outputs are the usual ones: the table on the terminal, the Markdown in ``--gpufit-summary`` and
$GITHUB_STEP_SUMMARY, the JSON document (``gpufit-ab/1``) in ``--gpufit-report``; its exit
status is 0 (nothing regressed or inconclusive) or 1, as a failed test's.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_gpufit.ab.child import terminate_as_interrupt
from pytest_gpufit.ab.output import markdown, table_lines
from pytest_gpufit.ab.run import run_ab, subprocess_runner, temporary_workdir
from pytest_gpufit.ab.sides import check_pair, make_side
from pytest_gpufit.atomic import write_text_atomic
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.settings import Settings

_OWN = (
    "--gpufit-ab",
    "--gpufit-ab-envs",
    "--gpufit-ab-rounds",
    "--gpufit-report",
    "--gpufit-summary",
)


def side_args(args: Sequence[str]) -> list[str]:
    """The invocation's arguments less the conductor's own options (``--opt=v`` and
    ``--opt v`` forms): the A/B options and the outputs the conductor writes.

    >>> side_args(["suites/x.yaml", "--gpufit-ab=a,b", "-k", "tp", "--gpufit-report", "r.json"])
    ['suites/x.yaml', '-k', 'tp']
    """
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _OWN:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def _items(items: Sequence[str], root: Path) -> list[str]:
    """A relative ``python=`` is relative to the rootdir, where the ini file declares it."""
    out = []
    for item in items:
        key, _, value = item.partition("=")
        if key == "python" and not os.path.isabs(os.path.expanduser(value)):
            item = f"python={root / value}"
        out.append(item)
    return out


def run(config: pytest.Config, settings: Settings) -> int:
    assert settings.ab is not None
    declared = dict(settings.ab_envs)
    where = settings.source("ab")
    for name in settings.ab:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise pytest.UsageError(
                f"{where}: environment {name!r} is not declared by gpufit_ab_envs "
                f"({settings.source('ab_envs')}; declared: {known}); add a line "
                f"'{name}: python=PATH' to the ini key gpufit_ab_envs"
            )
    root = config.rootpath
    try:
        a = make_side("A", _items(declared[settings.ab[0]], root), f"A ({settings.ab[0]})")
        b = make_side("B", _items(declared[settings.ab[1]], root), f"B ({settings.ab[1]})")
        check_pair(a, b)
        with terminate_as_interrupt(), temporary_workdir() as workdir:
            outcome = run_ab(
                a,
                b,
                side_args(config.invocation_params.args),
                subprocess_runner(Path(workdir)),
                rounds=settings.ab_rounds,
                tolerance=settings.baseline_tolerance,
                progress=lambda line: print(f"gpufit ab: {line}", flush=True),
            )
    except GpufitError as error:
        raise pytest.UsageError(f"gpufit ab: {error}") from None
    except KeyboardInterrupt as error:
        # as `gpufit ab`: one line, no traceback (run_ab stopped the sides); the exit code is
        # pytest's own for an interrupted session (2), as a CI script reading pytest expects
        print(f"gpufit ab: {str(error) or 'interrupted'}", file=sys.stderr, flush=True)
        return int(pytest.ExitCode.INTERRUPTED)
    print("\n".join(table_lines(outcome)))
    text = markdown(outcome)
    if settings.summary:
        write_text_atomic(Path(settings.summary), text)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(text)
    if settings.report:
        write_text_atomic(Path(settings.report), json.dumps(outcome.to_dict(), indent=2) + "\n")
    return outcome.exit_code
