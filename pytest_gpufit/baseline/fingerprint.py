"""What a measurement depends on besides the model and the suite: GPU, driver, software, commit."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpufit.hardware.records import Environment, Gpu, GpuLink


@dataclass(frozen=True)
class Fingerprint:
    """The environment of one run, stored beside its results."""

    gpu_name: str
    gpu_memory_bytes: int | None
    driver_version: str | None
    cuda_driver_version: str | None
    cuda_runtime_version: str | None
    torch_version: str | None
    transformers_version: str | None
    python_version: str | None
    git_commit: str | None
    engine: str | None = None  # a served target's engine and version: "vllm 0.32.0"
    # Which machine ran it, and that card's facts in it (PCIe link, clock event reasons, power
    # limit). Not keys and not "environment changes": runs of one GPU model from many hosts
    # meet in one store, and gpufit baseline fleet compares them. Absent from older records.
    host: str | None = None
    host_facts: Mapping[str, Any] | None = None
    # The card's links to the other GPUs of the machine (topology, P2P status), as
    # ``GpuLink.to_dict``; None on one GPU, for simulated cards, and in older records.
    links: tuple[Mapping[str, Any], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["host_facts"] = None if self.host_facts is None else dict(self.host_facts)
        data["links"] = None if self.links is None else [dict(x) for x in self.links]
        return data


_DIFF_FIELDS = (
    ("engine", "engine"),
    ("driver_version", "driver"),
    ("cuda_driver_version", "CUDA driver"),
    ("cuda_runtime_version", "CUDA runtime"),
    ("torch_version", "torch"),
    ("transformers_version", "transformers"),
    ("python_version", "python"),
    ("gpu_memory_bytes", "GPU memory"),
)


def default_host() -> str | None:
    """This machine's hostname; None when it has none."""
    try:
        return socket.gethostname() or None
    except OSError:
        return None


def fingerprint(
    gpu: Gpu | None,
    env: Environment,
    commit: str | None = None,
    engine: str | None = None,
    host: str | None = None,
    links: Sequence[GpuLink] = (),
) -> Fingerprint:
    """The fingerprint of a run on ``gpu`` (None: the CPU); ``commit`` is read once per session.

    ``links`` are the machine's (``Inventory.links``): those of ``gpu`` are kept."""
    facts = gpu.host_facts() if gpu is not None and not gpu.simulated else None
    own = (
        tuple(x.to_dict() for x in links if gpu.index in (x.a, x.b) and not x.simulated)
        if gpu is not None and not gpu.simulated
        else ()
    )
    return Fingerprint(
        gpu_name=gpu.name if gpu else "cpu",
        gpu_memory_bytes=gpu.memory_total_bytes if gpu else None,
        driver_version=env.driver_version,
        cuda_driver_version=env.cuda_driver_version,
        cuda_runtime_version=env.cuda_runtime_version,
        torch_version=env.torch_version,
        transformers_version=env.transformers_version,
        python_version=env.python_version,
        git_commit=commit,
        engine=engine,
        host=host,
        host_facts=facts if facts and any(v is not None for v in facts.values()) else None,
        links=own or None,
    )


def git_commit(root: Path | None) -> str | None:
    """HEAD of the repository at ``root``, or None outside one (a subprocess: call it once)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


def environment_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``['driver 550.54.15 -> 560.35.03', 'torch 2.5.1 -> 2.6.0']``, then what changed on a
    link between GPUs (P2P turned off by a BIOS or driver change shows here)."""
    return [
        f"{label} {_shown(old.get(key))} -> {_shown(new.get(key))}"
        for key, label in _DIFF_FIELDS
        if old.get(key) != new.get(key)
    ] + link_changes(old.get("links"), new.get("links"))


_LINK_FIELDS = (
    ("topology", "topology"),
    ("p2p_read", "P2P read"),
    ("p2p_write", "P2P write"),
    ("p2p_atomics", "P2P atomics"),
    ("p2p_nvlink", "P2P over NVLink"),
)


def link_changes(old: Any, new: Any) -> list[str]:
    """What changed on each GPU pair both records describe; nothing when either has no links
    (a record of an older gpufit, or of one GPU), and a malformed entry is passed over.

    >>> a = [{"a": 0, "b": 1, "topology": "single-switch", "p2p_read": "ok"}]
    >>> b = [{"a": 0, "b": 1, "topology": "single-switch", "p2p_read": "chipset-not-supported"}]
    >>> link_changes(a, b)
    ['GPU0-GPU1 P2P read ok -> chipset-not-supported']
    """

    def pairs(links: Any) -> dict[tuple[Any, Any], Mapping[str, Any]]:
        if not isinstance(links, list):
            return {}
        return {(x.get("a"), x.get("b")): x for x in links if isinstance(x, Mapping)}

    before, after = pairs(old), pairs(new)
    out = []
    for pair in sorted(set(before) & set(after), key=str):
        for key, label in _LINK_FIELDS:
            was, now = before[pair].get(key), after[pair].get(key)
            if was != now:
                out.append(f"GPU{pair[0]}-GPU{pair[1]} {label} {_shown(was)} -> {_shown(now)}")
    return out
