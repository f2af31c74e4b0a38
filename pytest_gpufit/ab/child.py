"""The children of ``gpufit ab`` and ``gpufit bisect`` (a side's pytest session, a step's
``gpufit ab``, an installer): each runs to its end with its output captured, and whatever ends
the wait early (Ctrl-C, a timeout) stops the child's whole process group before it goes on.

Each child leads a process group of its own, so the terminal's Ctrl-C reaches only this
process, which then conducts the stop one level at a time: SIGINT to the child's group (as
Ctrl-C would have: pytest tears its fixtures down and stops the servers it launched, a nested
``gpufit ab`` stops its own children the same way), and SIGKILL to whatever is left after a
grace period. A server a side launched lives in a session of its own; its owner stops it, or
its watchdog does when the owner was killed (``serving/server.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType

from pytest_gpufit.serving import sockets
from pytest_gpufit.serving.server import group_alive

GRACE_S = 15.0  # for a side's pytest to tear down and stop the server it launched


def run_child(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    input_text: str | None = None,
    grace_s: float = GRACE_S,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(command, capture_output=True, text=True)``, the child in a group of its
    own that is stopped (``stop_group``) when the wait ends early; the exception (KeyboardInterrupt,
    ``subprocess.TimeoutExpired``) propagates once the group is gone.

    >>> run_child(["echo", "hi"]).stdout
    'hi\\n'
    """
    with subprocess.Popen(
        list(command),
        env=None if env is None else dict(env),
        stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        try:
            out, err = child.communicate(input_text, timeout=timeout_s)
        except BaseException:
            stop_group(child, grace_s)
            raise
    return subprocess.CompletedProcess(list(command), child.returncode, out, err)


def stop_group(child: subprocess.Popen[str], grace_s: float = GRACE_S) -> None:
    """SIGINT to the child's process group, then SIGKILL to what is left after ``grace_s``
    (at once on a second Ctrl-C); returns when the child is reaped. The SIGKILL reaches the
    child's descendants in groups of their own too (a nested ``gpufit ab``'s sides: killed, it
    could no longer stop them)."""
    pgid = child.pid  # start_new_session: the child leads its own group
    _signal(pgid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    try:
        while time.monotonic() < deadline:
            if child.poll() is not None and not group_alive(pgid):
                return
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass  # asked twice: no more grace
    table = sockets.stats()
    descendants = sockets.tree(pgid, table)  # read before the kill: then they are orphans
    _signal(pgid, signal.SIGKILL)
    for pid, began in descendants.items():
        now = table.get(pid)
        if pid != pgid and now is not None and now.starttime == began:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    child.wait()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (``timeout``, a CI job cancelled, a closed terminal) taken as Ctrl-C
    while the block runs. The children run in process groups of their own, which a signal to
    this process's group does not reach: without this, SIGTERM ended the conductor alone and
    left the sides running. A signal ignored here (``nohup``) stays ignored; off the main
    thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    wanted = (signal.SIGTERM, signal.SIGHUP)
    before = {n: signal.getsignal(n) for n in wanted if signal.getsignal(n) is not signal.SIG_IGN}
    for signum in before:
        signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _signal(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # already gone
