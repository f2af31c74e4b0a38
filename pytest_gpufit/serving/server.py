"""A launched serving engine: one owner, one way out, nothing left running.

``LaunchedServer`` starts a command (``{port}`` replaced by a free port) in its own process
group, pinned with ``CUDA_VISIBLE_DEVICES`` by the caller, logging to a file that every error
names; waits until ``/v1/models`` or ``/health`` answers 200; fails within a poll interval when
the process exits during start-up, quoting the end of its log; and stops the whole group
(SIGTERM, then SIGKILL after a grace period) on ``stop()``, on leaving its ``with`` block, on a
failed start, at interpreter exit and on SIGTERM/SIGHUP to this process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

from pytest_gpufit.serving.errors import ServerStartError

READY_PATHS = ("/v1/models", "/health")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (another process may take it before the server).

    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def substitute_port(items: Sequence[str], port: int) -> list[str]:
    """``{port}`` in each argument replaced by ``port``; nothing else is formatted.

    >>> substitute_port(["serve", "--port", "{port}", "{x}"], 8123)
    ['serve', '--port', '8123', '{x}']
    """
    return [item.replace("{port}", str(port)) for item in items]


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when it is missing)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Servers started by this process and not yet stopped: stopped at exit and on SIGTERM/SIGHUP.
# Process-wide on purpose: an interpreter can only exit once, whoever owns each server.
_LIVE: set[LaunchedServer] = set()
_LIVE_LOCK = threading.Lock()
_HOOKS_INSTALLED = False


def _stop_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        server.stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    # Then die of the same signal, as the default handler would have.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        # Only where nobody else handles it: a handler someone installed stays theirs.
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_signal)


class LaunchedServer:
    """A server process started from ``command`` and stopped with its whole process group.

    ``base_url`` is ``http://{host}:{port}/v1``. Use as a context manager, or call ``start()``
    and ``stop()``; ``stop()`` may be called any number of times.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cuda_visible_devices: str | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        ready_timeout_s: float = 900.0,
        grace_s: float = 10.0,
        poll_s: float = 0.25,
        cwd: Path | None = None,
    ) -> None:
        if not command:
            raise ServerStartError("launch.command is empty; give the server's command line")
        self.port = port if port is not None else free_port(host)
        self.host = host
        self.command = substitute_port(command, self.port)
        self.env = dict(env or {})
        self.cuda_visible_devices = cuda_visible_devices
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.cwd = cwd  # relative paths in the command resolve here (a suite's folder)
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"gpufit-server-{self.port}-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None
        self.returncode: int | None = None  # the leader's exit status once stopped
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> LaunchedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _environment(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        if self.cuda_visible_devices is not None:
            # The device the requirements were judged on is the device the server gets.
            env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        return env

    def _resolve(self, env: Mapping[str, str]) -> str:
        program = self.command[0]
        found = shutil.which(program, path=env.get("PATH"))
        if found is None:
            raise ServerStartError(
                f"launch command {program!r} not found (not an executable path nor on PATH); "
                f"give the full path or install it (log would have been {self.log_path})"
            )
        return found

    def start(self) -> LaunchedServer:
        """Start the server and wait until it answers; on any failure nothing is left running."""
        if self.process is not None:
            return self
        env = self._environment()
        program = self._resolve(env)
        _install_hooks()
        with open(self.log_path, "ab") as log:
            log.write(f"# gpufit launch: {' '.join(self.command)}\n".encode())
            log.flush()
            try:
                self.process = subprocess.Popen(
                    [program, *self.command[1:]],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,  # its own process group: one signal reaches all
                )
            except OSError as exc:
                raise ServerStartError(
                    f"launch command {self.command[0]!r} could not start: {exc} "
                    f"(log: {self.log_path})"
                ) from exc
        self.pgid = self.process.pid  # session leader: its pid is the group id
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # also on Ctrl-C during a long start-up
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0)) as http:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise ServerStartError(
                        f"server exited with code {code} during start-up "
                        f"({' '.join(self.command)}); last lines of {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                for path in READY_PATHS:
                    try:
                        if http.get(f"{self.root_url}{path}").status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"server did not answer {' or '.join(READY_PATHS)} within "
                        f"{self.ready_timeout_s:g} s (launch.ready_timeout_s); last lines of "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(self.poll_s)

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after ``grace_s``; returns once the group is gone."""
        with self._lock:
            process, pgid = self.process, self.pgid
            if process is None or pgid is None:
                return
            with _LIVE_LOCK:
                _LIVE.discard(self)
            self._signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            try:
                process.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                deadline = 0.0  # the leader ignored SIGTERM: no more waiting
            # Children may outlive the leader (engine workers): give them the rest of the grace.
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if group_alive(pgid):
                self._signal_group(pgid, signal.SIGKILL)
            self.returncode = process.wait()
            deadline = time.monotonic() + 5.0
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.process = None

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass

    def __repr__(self) -> str:
        return f"LaunchedServer({self.command!r}, log={str(self.log_path)!r})"

    def describe(self) -> dict[str, Any]:
        """What the report says about this server."""
        return {"command": self.command, "base_url": self.base_url, "log": str(self.log_path)}
