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

    @property
    def simulated(self) -> bool:
        return self.source == "simulated"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "reason": self.reason,
            "warnings": list(self.warnings),
            "pinned": self.pinned,
            "gpus": [g.to_dict() for g in self.gpus],
            "environment": self.environment.to_dict(),
        }
