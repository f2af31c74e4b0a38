"""Findings of a new user's walk through docs/ab.md (h/user): failing until fixed.

Ctrl-C that lands outside `gpufit ab`'s round loop (while it probes the two sides'
interpreters, about 0.6-1.5 s into a run; or in any other `gpufit` command) raises a bare
``KeyboardInterrupt()``, whose ``str`` is empty. ``f"{error or 'interrupted'}"`` keeps the
exception (an exception instance is always true), so the line printed is ``gpufit ab: `` with
nothing after it, where the CHANGELOG promises ``gpufit CMD: interrupted``.
"""

from __future__ import annotations

import argparse

import pytest

from pytest_gpufit import cli


def test_a_bare_ctrl_c_in_a_gpufit_command_says_interrupted(monkeypatch, capsys):
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt  # as SIGINT raises it: no message

    monkeypatch.setattr(cli, "_probe", interrupted)
    assert cli.main(["probe"]) == 130
    assert capsys.readouterr().err == "gpufit probe: interrupted\n"


def test_a_bare_ctrl_c_while_pytest_gpufit_ab_probes_the_sides_says_interrupted(pytester):
    # the conductor's side probe (make_side runs each interpreter) interrupted by Ctrl-C
    pytester.makeconftest(
        """
        import pytest_gpufit.ab.native as native

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        native.make_side = interrupted
        """
    )
    pytester.makeini(
        """
        [pytest]
        gpufit_ab_envs =
            current: python=a/bin/python
            next: python=b/bin/python
        """
    )
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--gpufit-ab=current,next")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "gpufit ab: interrupted" in result.stderr.lines


def test_a_ctrl_c_while_gpufit_parses_its_arguments_says_interrupted(monkeypatch, capsys):
    # before any command is known: building the parser imports the ab and bisect options
    def interrupted() -> argparse.ArgumentParser:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "parser", interrupted)
    assert cli.main(["probe"]) == 130
    assert capsys.readouterr().err == "gpufit: interrupted\n"
