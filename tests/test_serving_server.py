"""A launched server's lifecycle: ready, failed starts, stop of the whole group, nothing left."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from lying_server import Liar, launcher

from pytest_gpufit.serving import sockets
from pytest_gpufit.serving.errors import LaunchWarning, ServerStartError
from pytest_gpufit.serving.server import LaunchedServer, free_port, group_alive

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
        connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
        connection.request("GET", "/v1/models")
        assert connection.getresponse().status == 200 and str(server.port) in server.base_url
        connection.close()
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


@pytest.mark.parametrize("how", ["exit", "sigterm", "sigkill"])
def test_owner_process_ending_leaves_nothing(tmp_path: Path, how: str) -> None:
    """The owner forgets stop(): its exit (atexit) or a SIGTERM to it still stops the group;
    so does its SIGKILL (pytest or an xdist worker killed: no handler runs, the watchdog sees
    its pipe close; that left the server running before issue 18)."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pytest_gpufit.serving.server import LaunchedServer
        s = LaunchedServer([sys.executable, {FAKES!r}, "--port", "{{port}}", "--child"],
                           grace_s=1.0, ready_timeout_s=60, log_path={str(tmp_path / "o.log")!r})
        s.start()
        print(s.pgid, flush=True)
        if {how!r} != "exit":
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
        if how != "exit":
            owner.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    if how == "sigterm":
        assert owner.returncode == -signal.SIGTERM
    if how == "sigkill":
        # SIGTERM, then SIGKILL after the 1 s grace (the --child grandchild ignores SIGTERM).
        assert wait_for(lambda: not group_alive(pgid), 20), "the server outlived its owner"
    assert_group_gone(pgid)


# ---- issue 18: the answering server is the launched one, and it stays ---------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate: object, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_process_that_took_the_port_first_is_never_measured(tmp_path: Path) -> None:
    """Was: vLLM binds late, so readiness found whatever answered on the port first and every
    check measured it. Here a slow-loading launch (it never binds) meets a squatter."""
    with Liar("usage") as squatter:
        server = LaunchedServer(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            port=squatter.port,
            log_path=tmp_path / "late.log",
            grace_s=1.0,
            ready_timeout_s=30,
        )
        with pytest.raises(ServerStartError) as info:
            server.start()
    message = str(info.value)
    assert f"127.0.0.1:{squatter.port} answers, but the socket listening on port" in message
    assert (
        f"belongs to pid {os.getpid()}" in message and "another process holds the port" in message
    )
    assert server.pgid is not None
    assert_group_gone(server.pgid)


def test_the_listener_is_verified_as_the_launched_group(tmp_path: Path) -> None:
    with LaunchedServer(
        [sys.executable, FAKES, "--port", "{port}"], log_path=tmp_path / "v.log", grace_s=1.0
    ) as server:
        described = server.describe()
        assert server.check() is None
    assert described["listener"].startswith("verified: pid ")
    assert described["listener"].endswith(" of the launched group")


@pytest.mark.parametrize("how", ["child", "setsid"])
def test_a_launch_that_daemonises_and_exits_is_a_failure(tmp_path: Path, how: str) -> None:
    """Was a pass of 4 checks and a daemon left running: the launch command started the
    server in the background and exited 0. Now the exit is noticed, the daemon stopped, and
    check() says what happened."""
    script = tmp_path / "daemonise.py"
    script.write_text(launcher(how, tmp_path / "daemon.pid", linger=1.0))
    server = LaunchedServer(
        [sys.executable, str(script), "{port}"],
        log_path=tmp_path / "d.log",
        grace_s=1.0,
        ready_timeout_s=30,
    )
    server.start()
    try:
        daemon = int((tmp_path / "daemon.pid").read_text())
        assert server.check() is None
        assert wait_for(lambda: server.check() is not None)
        said = server.check()
    finally:
        server.stop()
    assert said is not None and said.startswith(
        "the server exited with code 0 after becoming ready"
    )
    assert f"pid {daemon} (`" in said and "went on answering on its port" in said, said
    assert wait_for(lambda: not pid_alive(daemon), 10), "the daemon was left running"


def test_a_daemon_outside_the_launched_tree_fails_readiness(tmp_path: Path) -> None:
    """A double fork: the server is an orphan in a session of its own, so no process of the
    launch holds its socket."""
    script = tmp_path / "double_fork.py"
    script.write_text(launcher("double", tmp_path / "daemon.pid", linger=60))
    server = LaunchedServer(
        [sys.executable, str(script), "{port}"],
        log_path=tmp_path / "df.log",
        grace_s=1.0,
        ready_timeout_s=30,
    )
    try:
        with pytest.raises(ServerStartError, match="not to the launched server") as info:
            server.start()
    finally:
        daemon = int((tmp_path / "daemon.pid").read_text())
        os.kill(daemon, signal.SIGKILL)
    assert f"belongs to pid {daemon} (`" in str(info.value)


def test_a_server_killed_after_ready_fails_the_next_check(tmp_path: Path) -> None:
    server = LaunchedServer(
        [sys.executable, FAKES, "--port", "{port}"], log_path=tmp_path / "k.log", grace_s=1.0
    )
    with server:
        assert server.check() is None and server.pgid is not None
        os.killpg(server.pgid, signal.SIGKILL)
        assert wait_for(lambda: server.check() is not None)
        said = server.check()
    assert said == f"the server exited with code {-signal.SIGKILL} after becoming ready"


def test_logs_go_to_the_folder_the_caller_names(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "servers"
    server = LaunchedServer([sys.executable, "-c", "print('hello'); exit(2)"], log_dir=folder)
    with pytest.raises(ServerStartError, match="exited with code 2"):
        server.start()
    assert server.log_path.parent == folder and server.log_path.name.startswith("gpufit-server-")
    assert "hello" in server.log_path.read_text()


def test_two_xdist_workers_launching_one_target_are_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was silent: -n 2 with the default --dist load launched the target's server twice."""
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", f"gpufit-test-{os.getpid()}-{time.time_ns()}")
    command = [sys.executable, FAKES, "--port", "{port}"]
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    with LaunchedServer(command, log_path=tmp_path / "a.log", grace_s=1.0):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
        with (
            pytest.warns(LaunchWarning, match="which worker gw0 launched too"),
            LaunchedServer(command, log_path=tmp_path / "b.log", grace_s=1.0),
        ):
            pass
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    with LaunchedServer(command, log_path=tmp_path / "c.log", grace_s=1.0):
        pass  # gw0's server is gone: no warning (an error under -W error would say otherwise)


def test_listeners_are_read_from_proc() -> None:
    port = free_port()
    found = sockets.listeners(port, "127.0.0.1")
    if found is None:
        pytest.skip("no /proc/net/tcp here")
    assert found == []
    with Liar() as liar:
        found = sockets.listeners(liar.port, "127.0.0.1")
        assert found and all(s.port == liar.port for s in found)
        owners = sockets.socket_inodes([os.getpid()])
        assert {s.inode for s in found} <= set(owners)
