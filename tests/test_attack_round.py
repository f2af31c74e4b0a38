"""Attacks on this round's A/B changes (lost metrics, Ctrl-C, the GPU tier's A/B step): each
test pins a way the gate reads green where it must fail, leaves a process behind, or prints a
traceback. They are marked ``xfail(strict=True)`` until the product is fixed: a fix turns one
into an XPASS, which fails the run and asks for the marker to go."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from bisect_world import make_wheels
from test_ab_interrupt import (
    SLOW_TARGET,
    alive,
    assert_clean_stop,
    cmdline,
    interrupt,
    slow_pair,
    slow_test_running,
)

from pytest_gpufit.ab.bisect_envs import find_uv
from pytest_gpufit.ab.run import Run, run_ab
from pytest_gpufit.ab.sides import Side

REPO = Path(__file__).resolve().parent.parent
GPUFIT = str(Path(sys.executable).with_name("gpufit"))
SUMMARY = REPO / "scripts" / "gpu_tier_summary.py"
AB_ENV = REPO / "scripts" / "gpu_tier_ab_env.py"

PACKAGES = {"pytest-gpufit": "0.1.0", "transformers": "5.25.0", "torch": "2.13.0"}
A = Side("A", {}, "/a/bin/python", "3.11.7", PACKAGES, "/a")
B = Side("B", {}, "/b/bin/python", "3.11.7", PACKAGES, "/b")  # an A/A: the very same packages


def fake(per_round: Mapping[str, Sequence[Mapping[str, Mapping[str, float]]]], outcomes=None):
    """An executor whose side S in round r measures ``per_round[S][r - 1]`` (the last entry
    repeats), with the tests' outcomes ``outcomes[S]`` (all passed where not given)."""

    def execute(side: Side, round_no: int, args: Sequence[str]) -> Run:
        rounds = per_round[side.label]
        values = rounds[min(round_no, len(rounds)) - 1]
        told = (outcomes or {}).get(side.label) or {t: "passed" for t in values}
        return Run(side.label, round_no, 1.0, 0, values, outcomes=told)

    return execute


def steady(value: float, jitter: float = 0.001) -> list[dict[str, dict[str, float]]]:
    """Twelve rounds of one test measuring ``decode_tok_s`` near ``value``."""
    return [{"t.py::x": {"decode_tok_s": value * (1 + jitter * ((-1) ** r))}} for r in range(1, 13)]


# ---------------------------------------------------------------------------------------------
# The tier's A/B step: the summary passes an A/A that gpufit ab itself did not pass


def _tier_summary(tmp_path: Path, outcome_dict: dict) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ab.json").write_text(json.dumps(outcome_dict))
    (tmp_path / "ab-env.json").write_text(json.dumps({"kind": "A/A"}))
    return subprocess.run(
        [sys.executable, str(SUMMARY), str(tmp_path), "--ab"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_an_a_a_where_b_fails_a_test_fails_the_tier_step(tmp_path: Path) -> None:
    # t.py::x measures the same on both sides; t.py::y passes on A and fails on B every round
    a_tests = {"t.py::x": "passed", "t.py::y": "passed"}
    b_tests = {"t.py::x": "passed", "t.py::y": "failed"}
    outcome = run_ab(
        A,
        B,
        [],
        fake({"A": steady(100.0), "B": steady(100.0)}, {"A": a_tests, "B": b_tests}),
        rounds=6,
    )
    assert outcome.verdict == "regressed" and outcome.exit_code == 1  # gpufit ab says so
    assert [r.verdict for r in outcome.results] == ["same"]
    done = _tier_summary(tmp_path, outcome.to_dict())
    # gpu-tier.sh's ab_step: gpufit ab's exit 1 "is a verdict, which the summary weighs"
    assert done.returncode == 1, done.stdout


def test_an_a_a_where_b_loses_a_metric_fails_the_tier_step(tmp_path: Path) -> None:
    both = {"t.py::x": {"decode_tok_s": 100.0, "ttft_ms": 20.0}}
    only_x = {"t.py::x": {"decode_tok_s": 100.0}}
    outcome = run_ab(A, B, [], fake({"A": [both], "B": [both, both, both, only_x]}), rounds=6)
    assert outcome.lost and outcome.exit_code == 1  # gpufit ab says so
    done = _tier_summary(tmp_path, outcome.to_dict())
    assert "lost" in done.stdout, done.stdout  # the summary does not even name it
    assert done.returncode == 1, done.stdout


def test_an_a_a_with_too_few_rounds_for_any_interval_fails_the_tier_step(tmp_path: Path) -> None:
    outcome = run_ab(A, B, [], fake({"A": steady(100.0), "B": steady(50.0)}), rounds=2)
    assert not any(r.interval.exists for r in outcome.results) and outcome.exit_code == 1
    done = _tier_summary(tmp_path, outcome.to_dict())
    assert done.returncode == 1, done.stdout


# ---------------------------------------------------------------------------------------------
# gpufit ab's judgement: a metric that only one side measures from round 2 on


def test_a_metric_only_one_side_measures_from_round_2_is_never_same() -> None:
    """Was "same", exit 0: one_sided is checked in round 1 only and lost_metrics saw only a
    metric a side stopped measuring."""
    x = {"decode_tok_s": 100.0}
    first = {"t.py::x": dict(x)}
    later = {"t.py::x": dict(x), "t.py::y": {"decode_tok_s": 50.0}}  # y measured from round 2
    tests = {"t.py::x": "passed", "t.py::y": "passed"}  # both sides run both tests
    execute = fake({"A": [first, later], "B": [first]}, {"A": tests, "B": tests})
    outcome = run_ab(A, B, [], execute, rounds=6, inconclusive_ok=True)
    # B never measured t.py::y (a test both sides run: its outcomes agree), A did in 5 rounds
    assert outcome.verdict != "same" or outcome.exit_code != 0, outcome.to_dict()["metrics"]
    assert outcome.exit_code == 1
    assert [x.describe() for x in outcome.lost] == [
        "metric lost: t.py::y decode_tok_s: measured on side A from round 2, never on side B"
    ]


# ---------------------------------------------------------------------------------------------
# gpufit ab stopped by SIGTERM (a CI timeout, `timeout`, a runner's cancel): the sides run on


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_sigterm_to_gpufit_ab_leaves_no_side_running(tmp_path: Path) -> None:
    """Was the side's pytest and its helper left running, and the working folder: each side
    runs in a session of its own and gpufit ab had no SIGTERM handler."""
    a, b, project = slow_pair(tmp_path)
    pids = tmp_path / "pids"
    pids.mkdir()
    scratch = tmp_path / "tmp"  # gpufit ab's own working folder goes here
    scratch.mkdir()
    env = {**os.environ, "AB_PIDS": str(pids), "TMPDIR": str(scratch)}
    command = [GPUFIT, "ab", "--a", f"python={a}", "--b", f"python={b}", "--rounds", "6"]
    command += ["--", "test_slow.py"]
    try:
        # as `timeout` and CI runners do: SIGTERM to the group
        done, seen = interrupt(command, project, slow_test_running(pids), env, (signal.SIGTERM,))
        line = "gpufit ab: interrupted in round 1 of at most 6; no verdict, nothing written"
        assert_clean_stop(done, seen, line)
        assert not list(scratch.iterdir())  # nor its gpufit-ab-* working folder
    finally:
        _kill_recorded(pids)


def _kill_recorded(pids: Path) -> None:
    """What a failure left behind (each side recorded its pid), cleaned up."""
    for p in pids.iterdir():
        try:
            os.kill(int(p.stem), signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone: nothing was left


# A side's test stuck where SIGINT does not reach it (a CUDA call, C code, a handler that
# ignores it): only the SIGKILL after the grace stops it, and its helper with it.
STUBBORN_TARGET = SLOW_TARGET.replace(
    "def test_slow():\n",
    "def test_slow():\n    import signal\n\n    signal.signal(signal.SIGINT, signal.SIG_IGN)\n",
)


@pytest.mark.skipif(find_uv() is None, reason="uv is not installed (the dev extra)")
def test_ctrl_c_twice_in_gpufit_bisect_leaves_no_side_running(tmp_path: Path) -> None:
    """Was an orphaned side: a second Ctrl-C in gpufit bisect SIGKILLed the step's gpufit ab at
    once, which had only sent SIGINT to its side (a session of its own); a side that does not
    stop on SIGINT ran on."""
    wheels = tmp_path / "wheels"
    make_wheels(wheels)
    (tmp_path / "a.txt").write_text("pkg-a==1.0\npkg-b==1.0\n")
    (tmp_path / "test_slow.py").write_text(STUBBORN_TARGET)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {**os.environ, "AB_PIDS": str(pids)}

    def in_a_step(seen: set[int]) -> bool:
        return len([p for p in pids.iterdir() if int(p.stem) in seen]) == 2

    command = [GPUFIT, "bisect", "test_slow.py", "--a-requirements", str(tmp_path / "a.txt")]
    command += ["--change", "pkg-b==2.0", "--find-links", str(wheels), "--offline"]
    command += ["--work", str(tmp_path / "work"), "--json", str(tmp_path / "b.json")]
    command += ["--rounds", "6"]
    try:
        done, seen = interrupt(command, tmp_path, in_a_step, env, (signal.SIGINT,) * 2)
        assert done.returncode == 130, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        _wait(lambda: not any(alive(pid) for pid in seen), 20)
        left = {pid: cmdline(pid) for pid in seen if alive(pid)}
        assert not left, left
    finally:
        _kill_recorded(pids)


# ---------------------------------------------------------------------------------------------
# scripts/gpu_tier_ab_env.py: bad input is a traceback, and side B's venv is left behind


def test_make_with_a_json_in_a_missing_folder_is_one_line_and_leaves_no_venv(
    tmp_path: Path,
) -> None:
    """Was a FileNotFoundError traceback (exit 1) with the venv left behind: make wrote --json
    after building the venv, outside the GpufitError path."""
    venv = tmp_path / "side b"  # a space in the path: the venv itself copes
    done = subprocess.run(
        [sys.executable, str(AB_ENV), "make", str(venv), "--json", str(tmp_path / "no" / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2 and done.stderr.startswith("gpu_tier_ab_env: "), done.stderr
    assert not venv.exists()
