"""A launched server's lifecycle: ready, failed starts, stop of the whole group, nothing left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from pytest_gpufit.serving.errors import ServerStartError
from pytest_gpufit.serving.server import LaunchedServer, group_alive

FAKES = str(Path(__file__).with_name("serving_fakes.py"))


def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_start_serve_stop_leaves_no_process(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = LaunchedServer(
        [sys.executable, FAKES, "--port", "{port}", "--child"],
        log_path=log,
        ready_timeout_s=60,
        grace_s=1.0,
    )
    with server:
        assert server.pgid is not None
        pgid = server.pgid
        answer = httpx.get(f"{server.base_url}/models", timeout=5)
        assert answer.status_code == 200 and str(server.port) in server.base_url
    # The grandchild ignores SIGTERM: the group is gone only because stop escalated.
    assert_group_gone(pgid)
    assert "fake server pid" in log.read_text() and "child pid" in log.read_text()
    server.stop()  # idempotent
    assert_group_gone(pgid)


def test_stop_escalates_to_sigkill_after_grace(tmp_path: Path) -> None:
    server = LaunchedServer(
        [sys.executable, FAKES, "--port", "{port}", "--ignore-term"],
        log_path=tmp_path / "s.log",
        grace_s=0.5,
        ready_timeout_s=60,
    )
    server.start()
    pgid = server.pgid
    assert pgid is not None
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 10
    assert_group_gone(pgid)


def test_exit_during_start_up_fails_fast_quoting_the_log(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    code = "import sys; print('RuntimeError: no kernel image for sm_120', flush=True); sys.exit(3)"
    server = LaunchedServer([sys.executable, "-c", code], log_path=log, ready_timeout_s=600)
    start = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        server.start()
    assert time.monotonic() - start < 30  # not the 600 s ready timeout
    message = str(info.value)
    assert "exited with code 3 during start-up" in message
    assert str(log) in message and "no kernel image for sm_120" in message
    assert server.process is None


def test_command_not_found(tmp_path: Path) -> None:
    server = LaunchedServer(["gpufit-no-such-engine", "--port", "{port}"], log_path=tmp_path / "l")
    with pytest.raises(ServerStartError, match="'gpufit-no-such-engine' not found"):
        server.start()


def test_empty_command() -> None:
    with pytest.raises(ServerStartError, match="launch.command is empty"):
        LaunchedServer([])


def test_ready_timeout_stops_the_group(tmp_path: Path) -> None:
    log = tmp_path / "slow.log"
    server = LaunchedServer(
        [sys.executable, FAKES, "--port", "{port}", "--child", "--start-delay", "60"],
        log_path=log,
        ready_timeout_s=1.0,
        grace_s=0.5,
    )
    with pytest.raises(ServerStartError, match="did not answer") as info:
        server.start()
    assert str(log) in str(info.value) and "ready_timeout_s" in str(info.value)
    assert server.pgid is not None
    assert_group_gone(server.pgid)


def test_environment_and_device_pinning(tmp_path: Path) -> None:
    log = tmp_path / "env.log"
    code = textwrap.dedent(
        """
        import os, sys
        print("CVD=" + os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), flush=True)
        print("LEVEL=" + os.environ.get("VLLM_LOGGING_LEVEL", "unset"), flush=True)
        sys.exit(1)
        """
    )
    server = LaunchedServer(
        [sys.executable, "-c", code],
        env={"VLLM_LOGGING_LEVEL": "INFO"},
        cuda_visible_devices="1",
        log_path=log,
    )
    with pytest.raises(ServerStartError):
        server.start()
    text = log.read_text()
    assert "CVD=1" in text and "LEVEL=INFO" in text


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_owner_process_ending_leaves_nothing(tmp_path: Path, how: str) -> None:
    """The owner forgets stop(): its exit (atexit) or a SIGTERM to it still stops the group."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pytest_gpufit.serving.server import LaunchedServer
        s = LaunchedServer([sys.executable, {FAKES!r}, "--port", "{{port}}", "--child"],
                           grace_s=1.0, ready_timeout_s=60, log_path={str(tmp_path / "o.log")!r})
        s.start()
        print(s.pgid, flush=True)
        if {how!r} == "sigterm":
            time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert owner.stdout is not None
        pgid = int(owner.stdout.readline())
        assert group_alive(pgid)
        if how == "sigterm":
            owner.send_signal(signal.SIGTERM)
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    if how == "sigterm":
        assert owner.returncode == -signal.SIGTERM
    assert_group_gone(pgid)
