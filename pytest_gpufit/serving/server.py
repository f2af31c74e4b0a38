"""A launched serving engine: one owner, one way out, nothing left running.

``LaunchedServer`` starts a command (``{port}`` replaced by a free port) in its own process
group, pinned with ``CUDA_VISIBLE_DEVICES`` by the caller, logging to a file that every error
names (in the caller's ``log_dir``, the run's own folder); waits until ``/v1/models`` or
``/health`` answers 200 *and* the socket listening on the port belongs to the launched
process tree (``serving.sockets``: /proc/net/tcp inode -> /proc/PID/fd), so a process that
took the port first is never measured; fails within a poll interval when the process exits
during start-up, quoting the end of its log; and stops the whole group (SIGTERM, then SIGKILL
after a grace period) on ``stop()``, on leaving its ``with`` block, on a failed start, at
interpreter exit and on SIGTERM/SIGHUP to this process.

After it is ready, the launched process is expected to stay: one that exits (a launch command
that started a daemon and returned) is noted at once, the rest of its group is stopped, and
whatever still listens on the port is named (``check()``, the one call a check makes after it
ran). A watchdog process holds one end of a pipe whose other end only this process holds: when
this process dies in a way no handler sees (SIGKILL, an xdist worker killed), the pipe closes
and the watchdog stops the server's group (Linux's PR_SET_PDEATHSIG fires when the launching
*thread* ends, which a server started from a thread pool outlives).
"""

from __future__ import annotations

import atexit
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from pytest_gpufit.serving import sockets
from pytest_gpufit.serving.errors import LaunchWarning, ServerStartError

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


# The watchdog: reads its pipe until this process says "stop" (b"q") or dies (end of file),
# and in the second case stops the server's group as stop() would. Its own session, deaf to
# the terminal's Ctrl-C (which this process handles itself). A script of its own, standard
# library only (its alive() is group_alive again): a fresh interpreter may not find this
# package where this process found it (a path added at run time).
WATCHDOG = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
fd, pgid, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
try:
    while True:
        said = os.read(fd, 1)
        if said == b"q":
            sys.exit(0)
        if not said:
            break
except OSError:
    pass
def alive():
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
try:
    os.killpg(pgid, signal.SIGTERM)
except ProcessLookupError:
    sys.exit(0)
deadline = time.monotonic() + grace
while alive() and time.monotonic() < deadline:
    time.sleep(0.05)
if alive():
    os.killpg(pgid, signal.SIGKILL)
"""


def _answers(host: str, port: int, path: str, timeout_s: float = 2.0) -> bool:
    """Whether ``GET path`` answers 200 (the body is not read: a readiness poll needs none),
    straight to the port, never through a proxy the environment names."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


class LaunchedServer:
    """A server process started from ``command`` and stopped with its whole process group.

    ``base_url`` is ``http://{host}:{port}/v1``. Use as a context manager, or call ``start()``
    and ``stop()``; ``stop()`` may be called any number of times. The log goes to ``log_path``,
    else to a new file in ``log_dir`` (the caller's run folder), else in the system's temp.
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
        log_dir: Path | None = None,
        ready_timeout_s: float = 900.0,
        grace_s: float = 10.0,
        poll_s: float = 0.25,
        cwd: Path | None = None,
    ) -> None:
        if not command:
            raise ServerStartError("launch.command is empty; give the server's command line")
        self.port = port if port is not None else free_port(host)
        self.host = host
        self.template = list(command)
        self.command = substitute_port(command, self.port)
        self.env = dict(env or {})
        self.cuda_visible_devices = cuda_visible_devices
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.cwd = cwd  # relative paths in the command resolve here (a suite's folder)
        if log_path is None:
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(
                prefix=f"gpufit-server-{self.port}-", suffix=".log", dir=log_dir
            )
            os.close(handle)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None
        self.returncode: int | None = None  # the leader's exit status once stopped
        self.listener: str | None = None  # how the listening socket was verified
        self.exited: str | None = None  # why the server is gone, once it left on its own
        self._known: dict[int, int] = {}  # the tree's pids seen at readiness -> start time
        self._stopping = False
        self._settled = threading.Event()  # set once an exit after ready has been dealt with
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watch_fd: int | None = None
        self._marker: Path | None = None
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
        self._note_launch()
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
                self._forget_launch()
                raise ServerStartError(
                    f"launch command {self.command[0]!r} could not start: {exc} "
                    f"(log: {self.log_path})"
                ) from exc
        self.pgid = self.process.pid  # session leader: its pid is the group id
        self._stopping = False
        self._settled.clear()
        self.exited = None
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._start_watchdog()
            self._wait_ready()
        except BaseException:
            self.stop()  # also on Ctrl-C during a long start-up
            raise
        threading.Thread(
            target=self._watch_exit, args=(self.process,), name="gpufit-server-exit", daemon=True
        ).start()
        return self

    def _start_watchdog(self) -> None:
        read, write = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", WATCHDOG, str(read), str(self.pgid), str(self.grace_s)],
                pass_fds=(read,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            os.close(write)  # no watchdog: stop() and the exit hooks still stop the server
        else:
            self._watch_fd = write
        finally:
            os.close(read)

    def _stop_watchdog(self) -> None:
        fd, watchdog = self._watch_fd, self._watchdog
        self._watch_fd = self._watchdog = None
        if fd is not None:
            try:
                os.write(fd, b"q")
            except OSError:
                pass
            os.close(fd)
        if watchdog is not None:
            try:
                watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"server exited with code {code} during start-up "
                    f"({' '.join(self.command)}); last lines of {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            if any(_answers(self.host, self.port, path) for path in READY_PATHS):
                wrong = self._verify_listener()
                if wrong is None:
                    return
                raise ServerStartError(
                    f"{self.host}:{self.port} answers, but {wrong}: another process holds the "
                    "port gpufit picked for the launched server (it took it first, or the "
                    f"launch command left it behind); log: {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"server did not answer {' or '.join(READY_PATHS)} within "
                    f"{self.ready_timeout_s:g} s (launch.ready_timeout_s); last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(self.poll_s)

    def _verify_listener(self) -> str | None:
        """None when every socket listening on the port belongs to the launched tree; else
        who holds the port. Where /proc cannot show it, ``listener`` says it was not proved."""
        assert self.pgid is not None
        found = sockets.listeners(self.port, self.host)
        if not found:
            # Nothing to read (not Linux, a sandbox): the answer cannot be tied to a process.
            self.listener = "not verified: /proc/net/tcp does not show who listens on the port"
            return None
        table = sockets.stats()
        tree = sockets.tree(self.pgid, table)
        # Kept across checks: a process seen in the tree once is stopped with it, even after
        # its launcher exited and it was re-parented out of the tree.
        self._known.update(tree)
        ours = sockets.socket_inodes(tree)
        strangers = [sock for sock in found if sock.inode not in ours]
        if not strangers:
            pids = sorted({ours[sock.inode] for sock in found})
            self.listener = f"verified: pid {', '.join(map(str, pids))} of the launched group"
            return None
        holders = sockets.socket_inodes(table)
        seen = [sock for sock in strangers if sock.inode in holders]
        if not seen:
            # Held by a process this user cannot inspect: root's docker-proxy publishing a
            # container's port, say. Neither the launched server nor a squatter can be proved.
            self.listener = (
                f"not verified: the socket listening on port {self.port} belongs to a process "
                "this user cannot inspect (a container's published port?)"
            )
            return None
        owner = sockets.describe_owner(seen[0].inode, table)
        return (
            f"the socket listening on port {self.port} belongs to {owner}, not to the "
            f"launched server (process group {self.pgid})"
        )

    def _watch_exit(self, process: subprocess.Popen[bytes]) -> None:
        """Wait for the leader; if it leaves while nobody is stopping it, say so and stop the
        rest of its group (a daemon it left behind is not the server the suite names)."""
        code = process.wait()
        try:
            with self._lock:
                if self._stopping or self.process is not process:
                    return
                said = f"the server exited with code {code} after becoming ready"
                holders = self._holders()
                # The process stays known (its exit code is what a caller asks poll() for).
                self._halt_group(forget=False)
                # Its group is gone: a watchdog left waiting could one day signal a reused id.
                self._stop_watchdog()
                left = self._holders()
                if left:
                    said += f"; {left} still listens on its port {self.port}: stop it yourself"
                elif holders:
                    said += f"; {holders} went on answering on its port {self.port} (stopped now)"
                self.exited = said
        finally:
            self._settled.set()

    def _holders(self) -> str:
        """Who listens on the port now ('' when nobody does, or /proc cannot say)."""
        found = sockets.listeners(self.port, self.host)
        if not found:
            return ""
        table = sockets.stats()
        return ", ".join(sockets.describe_owner(sock.inode, table) for sock in found)

    def check(self) -> str | None:
        """Why the launched server is no longer the one a check measured, or None while it is:
        it exited (and who still answers on its port), or its port now belongs to another
        process. The one call a check makes after it ran."""
        process = self.process
        if self.exited is None and process is not None and process.poll() is not None:
            # The exit watcher is stopping what the leader left and naming who answers.
            self._settled.wait(self.grace_s + 15.0)
        if self.exited is not None:
            return self.exited
        if process is None:
            return None  # stopped by its owner, or never started
        code = process.poll()
        if code is not None:
            return f"the server exited with code {code} after becoming ready"
        if self.listener is not None and self.listener.startswith("verified"):
            wrong = self._verify_listener()
            if wrong is not None:
                # A launcher that just exited re-parents what it started out of the tree:
                # the exit watcher's account of that is the one to give.
                if self._settled.wait(1.0) and self.exited is not None:
                    return self.exited
                return f"after becoming ready, {wrong}"
        return None

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after ``grace_s``; returns once the group is gone."""
        with self._lock:
            self._stopping = True
            self._halt_group()
            self._settled.set()
        self._stop_watchdog()
        self._forget_launch()

    def _halt_group(self, forget: bool = True) -> None:
        process, pgid = self.process, self.pgid
        if process is None or pgid is None:
            return
        if forget:
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
        self._stop_escaped()
        if forget:
            self.process = None

    def _stop_escaped(self) -> None:
        """Processes of the tree seen at readiness that left its group (setsid): SIGKILL to
        those still running as the same process (same start time: not a reused pid)."""
        if not self._known:
            return
        table = sockets.stats()
        killed = []
        for pid, began in self._known.items():
            now = table.get(pid)
            if now is not None and now.starttime == began and now.pgrp != self.pgid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 5.0
        while killed and time.monotonic() < deadline:
            # Gone, or a zombie (its sockets closed) waiting for a parent that is not this one.
            killed = [pid for pid in killed if sockets.running(pid)]
            time.sleep(0.02)

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass

    # --- one target, one server: a warning when xdist workers launch the same command -------

    def _note_launch(self) -> None:
        """Under pytest-xdist, leave a mark per launch; a second worker launching the same
        command in the same run hears that two servers now run for one target."""
        run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        if not run or not worker:
            return
        key = hashlib.sha256("\0".join([*self.template, str(self.cwd)]).encode()).hexdigest()
        folder = Path(tempfile.gettempdir()) / f"gpufit-launches-{run[:32]}"
        try:
            folder.mkdir(exist_ok=True)
            self._marker = folder / f"{key[:16]}.{worker}"
            self._marker.touch()
            others = sorted(p.suffix[1:] for p in folder.glob(f"{key[:16]}.*") if p != self._marker)
        except OSError:
            return
        if others:
            message = (
                f"xdist worker {worker} launches `{' '.join(self.template)}`, which worker "
                f"{', '.join(others)} launched too: two servers for one target (on one GPU they "
                "share its memory and time). Run with --dist loadfile so one worker gets a "
                "target's checks."
            )
            warnings.warn(message, LaunchWarning, stacklevel=3)
            print(f"gpufit: WARNING: {message}", file=sys.stderr, flush=True)

    def _forget_launch(self) -> None:
        marker, self._marker = self._marker, None
        if marker is None:
            return
        try:
            marker.unlink()
            marker.parent.rmdir()  # only once the last mark is gone
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"LaunchedServer({self.command!r}, log={str(self.log_path)!r})"

    def describe(self) -> dict[str, Any]:
        """What the report says about this server."""
        out: dict[str, Any] = {
            "command": self.command,
            "base_url": self.base_url,
            "log": str(self.log_path),
        }
        if self.listener is not None:
            out["listener"] = self.listener
        if self.exited is not None:
            out["exited"] = self.exited
        return out
