"""Frozen records of what a machine has. Units are in the field names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pytest_gpufit.units import format_gb, format_gib


@dataclass(frozen=True)
class Gpu:
    """One GPU as the probe (or the catalog, under simulation) sees it.

    ``index`` is the ordinal a framework uses (``cuda:N``) after ``CUDA_VISIBLE_DEVICES``;
    a field the driver cannot report on this card is ``None``.
    """

    index: int
    name: str
    memory_total_bytes: int
    memory_free_bytes: int | None = None
    memory_used_bytes: int | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    compute_capability: tuple[int, int] | None = None
    architecture: str | None = None
    vendor: str = "nvidia"
    memory_bus_width_bits: int | None = None
    max_memory_clock_mhz: int | None = None
    memory_bandwidth_bytes_s: int | None = None
    sm_count: int | None = None
    mig_enabled: bool | None = None
    ecc_enabled: bool | None = None
    native_dtypes: tuple[str, ...] = ()
    catalog_id: str | None = None
    simulated: bool = False
    # Host facts (NVML; None where the driver cannot say, and always for simulated cards).
    # An idle card downtrains its link to save power: current < max at idle is normal.
    pcie_link_gen_current: int | None = None
    pcie_link_gen_max: int | None = None
    pcie_link_width_current: int | None = None
    pcie_link_width_max: int | None = None
    clock_event_reasons: tuple[str, ...] | None = None  # () when the clocks are not held back
    power_limit_mw: int | None = None  # enforced
    power_limit_default_mw: int | None = None

    @property
    def cc_text(self) -> str:
        if self.compute_capability is None:
            return self.architecture or "unknown"
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def label(self) -> str:
        """``GPU0 NVIDIA H100 80GB HBM3``: how reasons and reports name a device."""
        return f"GPU{self.index} {self.name}"

    def describe(self) -> str:
        memory = f"{format_gb(self.memory_total_bytes)} ({format_gib(self.memory_total_bytes)})"
        return f"{self.label}, {memory}, CC {self.cc_text}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["compute_capability"] = None if self.compute_capability is None else self.cc_text
        data["native_dtypes"] = list(self.native_dtypes)
        if self.clock_event_reasons is not None:
            data["clock_event_reasons"] = list(self.clock_event_reasons)
        return data

    def host_facts(self) -> dict[str, Any]:
        """The facts of this card in this host (PCIe link, clock event reasons, power limit)."""
        data = self.to_dict()
        return {name: data[name] for name in HOST_FACTS}


HOST_FACTS = (
    "pcie_link_gen_current",
    "pcie_link_gen_max",
    "pcie_link_width_current",
    "pcie_link_width_max",
    "clock_event_reasons",
    "power_limit_mw",
    "power_limit_default_mw",
)


def pcie_text(facts: dict[str, Any]) -> str | None:
    """``gen4 x16 (max gen5 x16)``; None when NVML said nothing about the link.

    >>> pcie_text({"pcie_link_gen_current": 1, "pcie_link_width_current": 16,
    ...            "pcie_link_gen_max": 4, "pcie_link_width_max": 16})
    'gen1 x16 (max gen4 x16)'
    """

    def link(gen: Any, width: Any) -> str | None:
        if gen is None and width is None:
            return None
        return f"gen{gen if gen is not None else '?'} x{width if width is not None else '?'}"

    now = link(facts.get("pcie_link_gen_current"), facts.get("pcie_link_width_current"))
    most = link(facts.get("pcie_link_gen_max"), facts.get("pcie_link_width_max"))
    if now is None and most is None:
        return None
    if most is None or now == most:
        return now or f"max {most}"
    return f"{now or '?'} (max {most})"


def power_text(facts: dict[str, Any]) -> str | None:
    """``350 W`` or ``300 W (default 350 W)``; None when NVML said nothing.

    >>> power_text({"power_limit_mw": 300000, "power_limit_default_mw": 350000})
    '300 W (default 350 W)'
    """
    enforced, default = facts.get("power_limit_mw"), facts.get("power_limit_default_mw")
    if enforced is None:
        return None if default is None else f"? (default {default / 1000:.0f} W)"
    if default is None or default == enforced:
        return f"{enforced / 1000:.0f} W"
    return f"{enforced / 1000:.0f} W (default {default / 1000:.0f} W)"


# ---- links between GPUs --------------------------------------------------------------------

# NVML's common ancestor of two GPUs (nvmlDeviceGetTopologyCommonAncestor), nearest first; the
# nvidia-smi ``topo -m`` name of each in brackets in TOPOLOGY_TEXT.
TOPOLOGIES = ("board", "single-switch", "multiple-switches", "host-bridge", "numa-node", "system")
NVML_TOPOLOGY = dict(zip((0, 10, 20, 30, 40, 50), TOPOLOGIES, strict=True))
TOPOLOGY_TEXT = {
    "nvlink": "NVLink",
    "board": "on one board",
    "single-switch": "through one PCIe switch [PIX]",
    "multiple-switches": "through several PCIe switches [PXB]",
    "host-bridge": "through a CPU's PCIe host bridge [PHB]",
    "numa-node": "across host bridges within one NUMA node [NODE]",
    "system": "across CPU sockets [SYS]",
}
# The bound order of ``requires_p2p(topology=...)``: a pair joined by NVLink meets any bound.
LINK_LEVELS = ("nvlink", *TOPOLOGIES)
# nvidia-smi ``topo -m``'s names for the levels (NV# is any NVLink count).
SMI_LEVELS = {
    "nv": "nvlink",
    "pix": "single-switch",
    "pxb": "multiple-switches",
    "phb": "host-bridge",
    "node": "numa-node",
    "sys": "system",
}


def link_level(text: str) -> str:
    """A level of ``LINK_LEVELS`` from its name or nvidia-smi's (any case); other text comes
    back lower-cased, for the caller to refuse or read otherwise.

    >>> link_level("PIX"), link_level("NV12"), link_level("Host-Bridge"), link_level("x")
    ('single-switch', 'nvlink', 'host-bridge', 'x')
    """
    key = text.strip().lower()
    return SMI_LEVELS.get(key.rstrip("0123456789") if key.startswith("nv") else key, key)


# NVML's P2P status (nvmlGpuP2PStatus_t), by value.
P2P_STATUS = {
    0: "ok",
    1: "chipset-not-supported",
    2: "gpu-not-supported",
    3: "topology-not-supported",
    4: "disabled-by-regkey",
    5: "not-supported",
    6: "unknown",
}
P2P_STATUS_TEXT = {
    "ok": "supported",
    "chipset-not-supported": "not supported by the chipset",
    "gpu-not-supported": "not supported by the GPU",
    "topology-not-supported": "not supported in this PCIe topology (IOH)",
    "disabled-by-regkey": "disabled by a driver registry key",
    "not-supported": "not supported",
    "unknown": "in an unknown state",
}


@dataclass(frozen=True)
class GpuLink:
    """How two GPUs of an inventory reach each other (one record per pair, ``a < b``).

    ``topology`` is NVML's common ancestor (``TOPOLOGIES``); each ``p2p_*`` field is NVML's
    P2P status for that capability (``P2P_STATUS``: ``"ok"`` when supported). A query the
    driver cannot answer leaves its field None; a simulated pair says only what the catalog
    knows (``simulated=True``).
    """

    a: int
    b: int
    topology: str | None = None
    p2p_read: str | None = None
    p2p_write: str | None = None
    p2p_atomics: str | None = None
    p2p_nvlink: str | None = None
    simulated: bool = False

    @property
    def name(self) -> str:
        """``GPU0-GPU1``."""
        return f"GPU{self.a}-GPU{self.b}"

    @property
    def p2p(self) -> bool | None:
        """True when P2P reads and writes both work; None when NVML could not say.

        >>> GpuLink(0, 1, p2p_read="ok", p2p_write="ok").p2p
        True
        >>> GpuLink(0, 1, p2p_read="not-supported", p2p_write=None).p2p
        False
        """
        states = (self.p2p_read, self.p2p_write)
        if any(s is not None and s != "ok" for s in states):
            return False
        return None if None in states else True

    @property
    def level(self) -> str | None:
        """``nvlink`` when P2P runs over NVLink, else the PCIe topology (None: unknown)."""
        return "nvlink" if self.p2p_nvlink == "ok" else self.topology

    def where(self) -> str:
        """``topology: system, across CPU sockets [SYS]``; says when it is not known.

        >>> GpuLink(0, 1, topology="single-switch").where()
        'topology: single-switch, through one PCIe switch [PIX]'
        """
        level = self.level
        if level is None:
            return "topology: unknown" + (" (simulated cards)" if self.simulated else "")
        if level == "nvlink":
            return "NVLink" + (f", PCIe topology: {self.topology}" if self.topology else "")
        return f"topology: {level}, {TOPOLOGY_TEXT[level]}"

    def p2p_problems(self) -> list[str]:
        """What keeps P2P reads and writes from working, one phrase each (empty when they do).

        >>> GpuLink(0, 1, p2p_read="not-supported", p2p_write="not-supported").p2p_problems()
        ['P2P read/write not supported']
        >>> GpuLink(0, 1, p2p_read="ok").p2p_problems()
        ['P2P write status unknown (NVML could not say)']
        """
        if self.p2p_read == self.p2p_write and self.p2p_read not in (None, "ok"):
            return [f"P2P read/write {P2P_STATUS_TEXT.get(str(self.p2p_read), self.p2p_read)}"]
        out = []
        who = "the catalog does not say" if self.simulated else "NVML could not say"
        for what, status in (("read", self.p2p_read), ("write", self.p2p_write)):
            if status is None:
                out.append(f"P2P {what} status unknown ({who})")
            elif status != "ok":
                out.append(f"P2P {what} {P2P_STATUS_TEXT.get(status, status)}")
        return out

    def describe(self) -> str:
        """One line for ``gpufit probe``.

        >>> GpuLink(0, 1, "board", "ok", "ok").describe()
        'GPU0-GPU1: board (on one board); P2P read ok, write ok, atomics unknown, NVLink unknown'
        """
        where = self.topology or "topology unknown"
        if self.topology:
            where += f" ({TOPOLOGY_TEXT[self.topology]})"
        states = ", ".join(
            f"{what} {status or 'unknown'}"
            for what, status in (
                ("read", self.p2p_read),
                ("write", self.p2p_write),
                ("atomics", self.p2p_atomics),
                ("NVLink", self.p2p_nvlink),
            )
        )
        sim = " [simulated]" if self.simulated else ""
        return f"{self.name}: {where}; P2P {states}{sim}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def links_among(links: tuple[GpuLink, ...], order: list[int]) -> tuple[GpuLink, ...]:
    """The links between the GPUs ``order`` keeps, renumbered to their place in it (a pinned
    xdist worker numbers its GPUs from 0 as CUDA does).

    >>> kept = links_among((GpuLink(0, 1, "system"), GpuLink(1, 3, "board")), [3, 1])
    >>> [(link.name, link.topology) for link in kept]
    [('GPU0-GPU1', 'board')]
    """
    place = {index: n for n, index in enumerate(order)}
    out = []
    for link in links:
        if link.a in place and link.b in place:
            a, b = sorted((place[link.a], place[link.b]))
            out.append(dataclasses.replace(link, a=a, b=b))
    return tuple(sorted(out, key=lambda link: (link.a, link.b)))


@dataclass(frozen=True)
class Environment:
    """Software versions that decide what a GPU test measures."""

    driver_version: str | None = None
    cuda_driver_version: str | None = None
    cuda_runtime_version: str | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
    python_version: str | None = None
    platform: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Inventory:
    """What a session may use: GPUs, the environment, and why there are none if so."""

    gpus: tuple[Gpu, ...] = ()
    environment: Environment = field(default_factory=Environment)
    source: str = "nvml"  # nvml | simulated | a provider's name
    reason: str | None = None  # why there is no GPU, when there is none
    warnings: tuple[str, ...] = ()  # GPUs that were dropped (lost), and other notes
    pinned: str | None = None  # set in a pytest-xdist worker that holds only some GPUs
    links: tuple[GpuLink, ...] = ()  # one per pair of GPUs, by their indices

    @property
    def simulated(self) -> bool:
        return self.source == "simulated"

    def link(self, a: int, b: int) -> GpuLink | None:
        """The link between GPU ``a`` and GPU ``b`` (either order); None when not probed."""
        low, high = sorted((a, b))
        return next((x for x in self.links if (x.a, x.b) == (low, high)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "reason": self.reason,
            "warnings": list(self.warnings),
            "pinned": self.pinned,
            "gpus": [g.to_dict() for g in self.gpus],
            "environment": self.environment.to_dict(),
            "links": [link.to_dict() for link in self.links],
        }
