"""Who listens on a TCP port, read from ``/proc`` (Linux): the proof that a launched server is
the one that answers on its port.

``/proc/net/tcp`` and ``/proc/net/tcp6`` list every socket of this network namespace with its
state and inode; ``/proc/PID/fd`` links name the inodes a process holds (``socket:[INODE]``).
A listening socket on the port whose inode no process of the launched tree holds belongs to
someone else: a process that took the port first (vLLM binds late, after loading the model), a
daemon the launch command left behind, a server with ``SO_REUSEPORT`` sharing the port.
Where ``/proc/net/tcp`` cannot be read (macOS, a sandbox) nothing can be proved and the caller
says so. Pure parsing (``parse_proc_net``, ``parse_stat``) is kept apart from the reads.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # TCP_LISTEN in the st column


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket: its address, port and inode."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    inode: int


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: hex of 32-bit words in host (little-endian)
    order.

    >>> str(_address("0100007F")), str(_address("00000000000000000000000001000000"))
    ('127.0.0.1', '::1')
    """
    raw = bytes.fromhex(text)
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(ordered)


def parse_proc_net(text: str) -> list[Listener]:
    """The listening sockets in the text of /proc/net/tcp or /proc/net/tcp6.

    >>> line = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
    >>> parse_proc_net("header\\n" + line + "  1000 0 4242 1 0 100 0 0 10 0")
    [Listener(address=IPv4Address('127.0.0.1'), port=8080, inode=4242)]
    """
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != LISTEN:
            continue
        host, _, port = fields[1].partition(":")
        try:
            found.append(Listener(_address(host), int(port, 16), int(fields[9])))
        except ValueError:
            continue
    return found


def listeners(port: int, host: str, proc: Path = PROC) -> list[Listener] | None:
    """The listening sockets that take connections to ``host:port`` (that address or any
    address, IPv4-mapped too), or None where /proc/net/tcp cannot be read."""
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:
        wanted = None  # a host name: any listener on the port may be the one it resolves to
    texts = []
    for name in ("tcp", "tcp6"):
        try:
            texts.append((proc / "net" / name).read_text())
        except OSError:
            continue
    if not texts:
        return None
    found = []
    for text in texts:
        for sock in parse_proc_net(text):
            if sock.port != port:
                continue
            address = sock.address
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if wanted is None or address.is_unspecified or address == wanted:
                found.append(sock)
    return found


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat that place a process: parent, group, session, start."""

    pid: int
    ppid: int
    pgrp: int
    session: int
    starttime: int


def parse_stat(text: str) -> Stat:
    """/proc/PID/stat's fields (the command name may hold spaces and parentheses).

    >>> parse_stat("42 (a (b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 0")
    Stat(pid=42, ppid=1, pgrp=42, session=42, starttime=777)
    """
    pid, _, rest = text.partition(" (")
    fields = rest.rpartition(") ")[2].split()
    return Stat(int(pid), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def stats(proc: Path = PROC) -> dict[int, Stat]:
    """Every process this user can see, by pid."""
    found: dict[int, Stat] = {}
    try:
        entries = list(proc.iterdir())
    except OSError:
        return found  # no /proc (macOS): nothing to place
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
    return found


def tree(leader: int, table: dict[int, Stat]) -> dict[int, int]:
    """The launched tree: the processes of the leader's session or group, and its descendants
    that left them (a daemon that called setsid); pid -> start time (against pid reuse)."""
    members = {
        pid: s.starttime
        for pid, s in table.items()
        if leader in (s.session, s.pgrp) or pid == leader
    }
    grown = True
    while grown:
        grown = False
        for pid, s in table.items():
            if pid not in members and s.ppid in members:
                members[pid] = s.starttime
                grown = True
    return members


def socket_inodes(pids: Iterable[int], proc: Path = PROC) -> dict[int, int]:
    """The socket inodes the processes hold: inode -> pid (unreadable processes are skipped)."""
    found = {}
    for pid in pids:
        fds = proc / str(pid) / "fd"
        try:
            names = os.listdir(fds)
        except OSError:
            continue
        for name in names:
            try:
                link = os.readlink(fds / name)
            except OSError:
                continue
            if link.startswith("socket:["):
                found[int(link[8:-1])] = pid
    return found


def running(pid: int, proc: Path = PROC) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie whose files are closed)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    return text.rpartition(") ")[2][:1] not in ("Z", "X")


def command_line(pid: int, proc: Path = PROC) -> str:
    """A process's command line, for a message ('' when it cannot be read)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:300]


def describe_owner(inode: int, table: dict[int, Stat], proc: Path = PROC) -> str:
    """Who holds a socket: 'pid N (`command`)', or that it is a process this user cannot see."""
    owner = socket_inodes(table, proc).get(inode)
    if owner is None:
        return "a process this user cannot inspect (another user's, or another container's)"
    return f"pid {owner} (`{command_line(owner, proc)}`)"
