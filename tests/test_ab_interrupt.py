"""Ctrl-C during ``gpufit ab``, ``pytest --gpufit-ab`` and ``gpufit bisect``: one line on
stderr naming where it stopped, exit 130 (``pytest --gpufit-ab``: pytest's 2), no traceback, no
output written (a previous one left as it was), and no child left alive: not the side's pytest,
not what its test started, not a server a side launched. Real subprocesses; SIGINT goes to the
command's process group, as a terminal's Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ab_envs import SERVED_SUITE, build_wheel, make_venv
from bisect_world import make_wheels

from pytest_gpufit.ab.bisect_envs import find_uv

GPUFIT = str(Path(sys.executable).with_name("gpufit"))

# A side's test that takes its time and starts a child of its own (as a test may), both
# announced in $AB_PIDS (a side inherits this environment).
SLOW_TARGET = """import os
import subprocess
import sys
import time
from pathlib import Path


def test_slow():
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    folder = Path(os.environ["AB_PIDS"])
    (folder / f"{helper.pid}.helper").touch()
    (folder / f"{os.getpid()}.side").touch()
    time.sleep(300)
"""


def slow_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two environments (pytest-gpufit, no slowpkg) and a project whose test_slow.py runs until
    it is stopped: the sides' pythons and the project folder."""
    a = make_venv(tmp_path / "envs" / "a", None, None)
    b = make_venv(tmp_path / "envs" / "b", None, None)
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_slow.py").write_text(SLOW_TARGET)
    return a, b, project


def slow_test_running(pids: Path) -> Callable[[set[int]], bool]:
    """Whether SLOW_TARGET's test and its helper both announced themselves in ``pids`` and are
    among the processes ``seen`` in the run's tree."""

    def running(seen: set[int]) -> bool:
        return len([p for p in pids.iterdir() if int(p.stem) in seen]) == 2

    return running


def children(root: int) -> set[int]:
    """Every live descendant of ``root`` (by parent pid, through /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {pid for pid in found if alive(pid)}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its reaping is left


def interrupt(
    command: list[str],
    cwd: Path,
    ready: Callable[[set[int]], bool],
    env: dict[str, str],
    signals: tuple[int, ...] = (signal.SIGINT,),
    gap_s: float = 1.0,
) -> tuple[subprocess.CompletedProcess[str], dict[int, str]]:
    """Start ``command``, wait until ``ready(its descendants)``, Ctrl-C it (or send
    ``signals`` to its group, ``gap_s`` apart: Ctrl-C twice, SIGTERM as ``timeout`` sends it);
    its result and the descendants seen then, with their command lines."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 300
        seen: set[int] = set()
        while time.monotonic() < deadline and process.poll() is None:
            seen = children(process.pid)
            if ready(seen):
                break
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        assert ready(seen), "never got there"
        named = {pid: cmdline(pid) for pid in children(process.pid)}
        for i, signum in enumerate(signals):
            if i:
                time.sleep(gap_s)
            os.killpg(process.pid, signum)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(command, process.returncode, out, err), named


def assert_clean_stop(
    done: subprocess.CompletedProcess[str], seen: dict[int, str], line: str, code: int = 130
) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == line, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    deadline = time.monotonic() + 20  # a launched server's grace to stop
    while time.monotonic() < deadline and any(alive(pid) for pid in seen):
        time.sleep(0.2)
    left = {pid: name for pid, name in seen.items() if alive(pid)}
    assert not left, left


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    pids = tmp_path / "pids"
    pids.mkdir()
    return {**os.environ, "AB_PIDS": str(pids)}


def test_ctrl_c_in_gpufit_ab_stops_everything_and_writes_nothing(tmp_path, env):
    a, b, project = slow_pair(tmp_path)
    report = tmp_path / "ab.json"
    report.write_text("the previous run's report\n")
    pids = Path(env["AB_PIDS"])
    command = [GPUFIT, "ab", "--a", f"python={a}", "--b", f"python={b}", "--rounds", "6"]
    command += ["--json", str(report), "--markdown", str(tmp_path / "ab.md"), "--", "test_slow.py"]
    done, seen = interrupt(command, project, slow_test_running(pids), env)
    assert_clean_stop(
        done, seen, "gpufit ab: interrupted in round 1 of at most 6; no verdict, nothing written"
    )
    assert {p.suffix for p in pids.iterdir()} == {".side", ".helper"}
    assert report.read_text() == "the previous run's report\n"
    assert not (tmp_path / "ab.md").exists()
    assert not list(tmp_path.glob(".ab.json*")) and not list(tmp_path.glob(".ab.md*"))


def test_ctrl_c_in_pytest_gpufit_ab_stops_a_launched_server(tmp_path, env):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "1.0", 1.0)
    build_wheel(wheels, "2.0", 1.6)
    v1 = make_venv(tmp_path / "envs" / "v1", wheels, "1.0")
    v2 = make_venv(tmp_path / "envs" / "v2", wheels, "2.0")
    # a served target that is slow to measure: many requests per session
    suite = SERVED_SUITE.replace("warmup: 1, repeats: 3", "warmup: 1, repeats: 200")
    (tmp_path / "served.gpufit.yaml").write_text(suite)
    (tmp_path / "pytest.ini").write_text(
        f"[pytest]\ngpufit_ab_envs =\n    now: python={v1} tag=a\n    next: python={v2} tag=b\n"
    )
    summary = tmp_path / "ab.md"

    def serving(seen: set[int]) -> bool:
        return any("slowpkg.serve" in cmdline(pid) for pid in seen)

    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "served.gpufit.yaml"]
    command += ["--gpufit-ab=now,next", "--gpufit-ab-rounds=4", f"--gpufit-summary={summary}"]
    done, seen = interrupt(command, tmp_path, serving, env)
    assert any("slowpkg.serve" in name for name in seen.values())  # up when interrupted
    assert_clean_stop(
        done,
        seen,
        "gpufit ab: interrupted in round 1 of at most 4; no verdict, nothing written",
        code=pytest.ExitCode.INTERRUPTED,  # pytest's own code for Ctrl-C, 2
    )
    assert not summary.exists()


@pytest.mark.skipif(find_uv() is None, reason="uv is not installed (the dev extra)")
def test_ctrl_c_in_gpufit_bisect_names_the_step(tmp_path, env):
    wheels = tmp_path / "wheels"
    make_wheels(wheels)
    (tmp_path / "a.txt").write_text("pkg-a==1.0\npkg-b==1.0\n")
    (tmp_path / "test_slow.py").write_text(SLOW_TARGET)
    out = tmp_path / "bisect.json"
    pids = Path(env["AB_PIDS"])
    command = [GPUFIT, "bisect", "test_slow.py", "--a-requirements", str(tmp_path / "a.txt")]
    command += ["--change", "pkg-b==2.0", "--find-links", str(wheels), "--offline"]
    command += ["--work", str(tmp_path / "work"), "--json", str(out), "--rounds", "6"]
    done, seen = interrupt(command, tmp_path, slow_test_running(pids), env)
    assert_clean_stop(
        done,
        seen,
        "gpufit bisect: interrupted at step 1 (B against A); no answer, nothing written",
    )
    assert not out.exists()
    assert not list((tmp_path / "work" / "ab").glob("step-*"))
