"""Probe NVIDIA GPUs through NVML. No CUDA context is created.

Every per-field query that a card or driver does not support becomes ``None``; failures of the
library as a whole become an empty ``Inventory`` that keeps the reason.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, TypeVar

from pytest_gpufit.hardware.dtypes import native_dtypes
from pytest_gpufit.hardware.environment import software_environment
from pytest_gpufit.hardware.records import NVML_TOPOLOGY, P2P_STATUS, Gpu, GpuLink, Inventory

T = TypeVar("T")

_ARCHITECTURES = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
    13: "rubin",
}


# NVML's clock event (formerly "throttle") reason bits, as nvml.h numbers them.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
# Reasons that mean the card is held below what it should do under load; the others are
# normal (idle, a user's application clocks, sync boost, the software power cap at full load).
SLOWDOWN_REASONS = frozenset(
    {
        "hw_slowdown",
        "sw_thermal_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
        "board_limit",
        "reliability",
    }
)


def clock_event_names(mask: int) -> tuple[str, ...]:
    """The names of the bits set in an NVML clock event reason mask; unknown bits by value.

    >>> clock_event_names(0x1 | 0x40 | 0x10000)
    ('gpu_idle', 'hw_thermal_slowdown', 'unknown_0x10000')
    >>> clock_event_names(0)
    ()
    """
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_EVENT_REASONS)
    bit = 1
    while rest >= bit:
        if rest & bit:
            names.append(f"unknown_{bit:#x}")
        bit <<= 1
    return tuple(names)


def _load_nvml() -> ModuleType | str:
    try:
        import pynvml  # late import: only the first probe pays for it
    except ImportError:
        return "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    return pynvml  # type: ignore[no-any-return]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def library_failure(nvml: ModuleType, error: Exception) -> str:
    """A readable reason for an NVML error that leaves no usable GPU."""
    reasons = {
        "NVMLError_LibraryNotFound": (
            "NVML shared library not found (is the NVIDIA driver installed?)"
        ),
        "NVMLError_DriverNotLoaded": "NVIDIA driver not loaded",
        "NVMLError_NoPermission": "no permission to query the NVIDIA driver",
        "NVMLError_GpuIsLost": "GPU is lost (fell off the bus or stopped answering)",
        "NVMLError_Uninitialized": "NVML is not initialised",
    }
    for name, reason in reasons.items():
        cls = getattr(nvml, name, None)
        if cls is not None and isinstance(error, cls):
            return reason
    return f"NVML error: {error}"


def _cuda_version_text(value: int | None) -> str | None:
    """NVML's 12040 is CUDA 12.4."""
    if not value:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def select_visible(uuids: list[str], visible: str | None) -> tuple[list[int], str | None]:
    """NVML indices that ``CUDA_VISIBLE_DEVICES`` exposes, in its order, like CUDA reads it.

    CUDA stops at the first entry that names no device; integers are taken in NVML (PCI bus)
    order, which matches CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.

    >>> select_visible(["GPU-a1", "GPU-b2"], "1,GPU-a")
    ([1, 0], None)
    >>> select_visible(["GPU-a1"], "")
    ([], 'CUDA_VISIBLE_DEVICES is empty, so no GPU is visible')
    """
    if visible is None:
        return list(range(len(uuids))), None
    chosen: list[int] = []
    for token in (t.strip() for t in visible.split(",")):
        index: int | None = None
        if token.lstrip("-").isascii() and token.lstrip("-").isdigit():
            index = int(token) if 0 <= int(token) < len(uuids) else None
        elif token.startswith("GPU-"):
            matches = [i for i, u in enumerate(uuids) if u.startswith(token)]
            index = matches[0] if len(matches) == 1 else None
        if index is None or index in chosen:
            break
        chosen.append(index)
    if not chosen:
        what = (
            "empty" if not visible.strip() else f"{visible!r}, which names no GPU of this machine"
        )
        return [], f"CUDA_VISIBLE_DEVICES is {what}, so no GPU is visible"
    return chosen, None


class _Lost(Exception):
    pass


def _device(nvml: ModuleType, nvml_index: int, index: int) -> Gpu:
    lost = getattr(nvml, "NVMLError_GpuIsLost", ())

    def query(fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except lost as error:
            raise _Lost(str(error)) from error
        except nvml.NVMLError:
            return None

    handle = query(nvml.nvmlDeviceGetHandleByIndex, nvml_index)
    if handle is None:
        raise _Lost("handle not available")
    memory = query(nvml.nvmlDeviceGetMemoryInfo, handle)
    if memory is None:
        raise _Lost("memory information not available")
    cc = query(nvml.nvmlDeviceGetCudaComputeCapability, handle)
    cc = (int(cc[0]), int(cc[1])) if cc else None
    arch_code = query(nvml.nvmlDeviceGetArchitecture, handle)
    architecture = _ARCHITECTURES.get(arch_code) if arch_code is not None else None
    pci = query(nvml.nvmlDeviceGetPciInfo, handle)
    bus_width = query(nvml.nvmlDeviceGetMemoryBusWidth, handle)
    mem_clock = query(nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_MEM)
    # Double data rate: bytes/s = bus bits / 8 * clock * 2 (H100 SXM: 5120 b, 2619 MHz: 3.35 TB/s)
    bandwidth = int(bus_width / 8 * mem_clock * 1e6 * 2) if bus_width and mem_clock else None
    attributes = query(nvml.nvmlDeviceGetAttributes, handle)
    mig = query(nvml.nvmlDeviceGetMigMode, handle)
    ecc = query(nvml.nvmlDeviceGetEccMode, handle)
    name = query(nvml.nvmlDeviceGetName, handle)
    uuid = query(nvml.nvmlDeviceGetUUID, handle)
    host = _host_facts(nvml, handle, query)
    return Gpu(
        index=index,
        name=_text(name) if name is not None else f"NVIDIA GPU {nvml_index}",
        memory_total_bytes=int(memory.total),
        memory_free_bytes=int(memory.free),
        memory_used_bytes=int(memory.used),
        uuid=_text(uuid) if uuid is not None else None,
        pci_bus_id=_text(pci.busId) if pci is not None else None,
        compute_capability=cc,
        architecture=architecture,
        memory_bus_width_bits=int(bus_width) if bus_width else None,
        max_memory_clock_mhz=int(mem_clock) if mem_clock else None,
        memory_bandwidth_bytes_s=bandwidth,
        sm_count=getattr(attributes, "multiprocessorCount", None),
        mig_enabled=bool(mig[0]) if mig else None,
        ecc_enabled=bool(ecc[0]) if ecc else None,
        native_dtypes=native_dtypes(cc, architecture),
        **host,
    )


def _host_facts(nvml: ModuleType, handle: Any, query: Callable[..., Any]) -> dict[str, Any]:
    """PCIe link, clock event reasons and power limits; a function an old binding lacks, or
    a query the driver refuses, leaves its field None."""

    def ask(*names: str) -> Any:
        for fn_name in names:  # the first that this binding has and the driver answers
            fn = getattr(nvml, fn_name, None)
            value = query(fn, handle) if fn is not None else None
            if value is not None:
                return value
        return None

    def whole(value: Any) -> int | None:
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    mask = whole(
        ask("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
    )
    return {
        "pcie_link_gen_current": whole(ask("nvmlDeviceGetCurrPcieLinkGeneration")),
        "pcie_link_gen_max": whole(ask("nvmlDeviceGetMaxPcieLinkGeneration")),
        "pcie_link_width_current": whole(ask("nvmlDeviceGetCurrPcieLinkWidth")),
        "pcie_link_width_max": whole(ask("nvmlDeviceGetMaxPcieLinkWidth")),
        "clock_event_reasons": None if mask is None else clock_event_names(mask),
        "power_limit_mw": whole(ask("nvmlDeviceGetEnforcedPowerLimit")),
        "power_limit_default_mw": whole(ask("nvmlDeviceGetPowerManagementDefaultLimit")),
    }


# nvmlGpuP2PCapsIndex_t. Literal values: pynvml spells NVML_P2P_CAPS_INDEX_READ as ``0,``
# (a tuple), so its constant cannot be passed to the library.
P2P_CAPS = {"p2p_read": 0, "p2p_write": 1, "p2p_nvlink": 2, "p2p_atomics": 3}


def _handle(nvml: ModuleType, nvml_index: int) -> Any:
    try:
        return nvml.nvmlDeviceGetHandleByIndex(nvml_index)
    except nvml.NVMLError:
        return None


def _links(nvml: ModuleType, handles: list[tuple[int, Any]]) -> tuple[GpuLink, ...]:
    """Topology and P2P status of every pair of the probed GPUs (``(index, handle)``).

    A query the driver refuses (or a binding without it) leaves its field None; a lost GPU
    here leaves the pair's fields None too: the card itself is judged by ``_device``."""

    def ask(name: str, *args: Any) -> Any:
        fn = getattr(nvml, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except nvml.NVMLError:
            return None

    out = []
    for n, (a, first) in enumerate(handles):
        for b, second in handles[n + 1 :]:
            if first is None or second is None:
                out.append(GpuLink(a, b))
                continue
            level = ask("nvmlDeviceGetTopologyCommonAncestor", first, second)

            def status(field: str, first: Any = first, second: Any = second) -> str | None:
                value = ask("nvmlDeviceGetP2PStatus", first, second, P2P_CAPS[field])
                return P2P_STATUS.get(value, "unknown") if isinstance(value, int) else None

            out.append(
                GpuLink(
                    a,
                    b,
                    topology=NVML_TOPOLOGY.get(level) if isinstance(level, int) else None,
                    p2p_read=status("p2p_read"),
                    p2p_write=status("p2p_write"),
                    p2p_atomics=status("p2p_atomics"),
                    p2p_nvlink=status("p2p_nvlink"),
                )
            )
    return tuple(out)


def probe_nvml(
    nvml: ModuleType | None = None, visible: str | None = None, use_environ: bool = True
) -> Inventory:
    """Probe every visible NVIDIA GPU. Never raises for a machine problem."""
    if nvml is None:
        loaded = _load_nvml()
        if isinstance(loaded, str):
            return Inventory(environment=software_environment(), reason=loaded)
        nvml = loaded
    if use_environ and visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        with _session(nvml):
            return _probe_initialised(nvml, visible)
    except nvml.NVMLError as error:
        return Inventory(environment=software_environment(), reason=library_failure(nvml, error))


@contextmanager
def _session(nvml: ModuleType) -> Iterator[None]:
    """nvmlInit ... nvmlShutdown; an error of the shutdown itself is of no interest."""
    nvml.nvmlInit()
    try:
        yield
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def _probe_initialised(nvml: ModuleType, visible: str | None) -> Inventory:
    driver = nvml.nvmlSystemGetDriverVersion()
    try:
        cuda = _cuda_version_text(nvml.nvmlSystemGetCudaDriverVersion())
    except nvml.NVMLError:
        cuda = None
    environment = software_environment(_text(driver), cuda)
    count = nvml.nvmlDeviceGetCount()
    uuids = []
    for i in range(count):
        try:
            uuids.append(_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))))
        except nvml.NVMLError:
            uuids.append("")
    chosen, reason = select_visible(uuids, visible)
    if count == 0:
        reason = "the NVIDIA driver reports no GPU"
    gpus: list[Gpu] = []
    kept: list[int] = []  # the NVML index of each probed GPU
    problems: list[str] = []
    for index, nvml_index in enumerate(chosen):
        try:
            gpus.append(_device(nvml, nvml_index, index))
            kept.append(nvml_index)
        except _Lost as lost:
            problems.append(f"GPU{index} (NVML index {nvml_index}) is lost: {lost}")
    if problems and not gpus:
        reason = "; ".join(problems)
    # Keep indices consecutive after dropping a lost card: that is what CUDA would number.
    gpus = [dataclasses.replace(g, index=i) for i, g in enumerate(gpus)]
    handles = [(i, _handle(nvml, k)) for i, k in enumerate(kept)]
    return Inventory(
        gpus=tuple(gpus),
        environment=environment,
        source="nvml",
        reason=reason,
        warnings=tuple(problems),
        links=_links(nvml, handles) if len(handles) > 1 else (),
    )


def free_memory(uuids: list[str | None], nvml: ModuleType | None = None) -> dict[str, int]:
    """Free bytes now, by UUID, for ``requires_vram(free=True)``; empty when NVML fails."""
    loaded = nvml or _load_nvml()
    if isinstance(loaded, str):
        return {}
    out: dict[str, int] = {}
    try:
        with _session(loaded):
            for uuid in filter(None, uuids):
                try:
                    handle = loaded.nvmlDeviceGetHandleByUUID(uuid)
                    out[uuid] = int(loaded.nvmlDeviceGetMemoryInfo(handle).free)
                except loaded.NVMLError:
                    continue
    except loaded.NVMLError:
        return {}
    return out


def card_state(nvml_index: int, nvml: ModuleType | None = None) -> dict[str, Any]:
    """The card's state now, for ``gpufit ab``'s rounds: clocks, temperature, clock event
    reasons, memory used, and the memory of processes on it. A query the card or binding does
    not answer is None; without NVML, ``{"nvml": "<why not>"}``."""
    loaded = nvml or _load_nvml()
    if isinstance(loaded, str):
        return {"nvml": loaded}
    lib = loaded

    def ask(name: str, *args: Any) -> Any:
        fn = getattr(lib, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except lib.NVMLError:
            return None

    try:
        with _session(lib):
            handle = lib.nvmlDeviceGetHandleByIndex(nvml_index)
            mask = ask("nvmlDeviceGetCurrentClocksEventReasons", handle)
            if mask is None:
                mask = ask("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
            memory = ask("nvmlDeviceGetMemoryInfo", handle)
            procs = ask("nvmlDeviceGetComputeRunningProcesses", handle) or []
            return {
                "nvml_index": nvml_index,
                "sm_clock_mhz": ask(
                    "nvmlDeviceGetClockInfo", handle, getattr(lib, "NVML_CLOCK_SM", 1)
                ),
                "memory_clock_mhz": ask(
                    "nvmlDeviceGetClockInfo", handle, getattr(lib, "NVML_CLOCK_MEM", 2)
                ),
                "temperature_c": ask(
                    "nvmlDeviceGetTemperature", handle, getattr(lib, "NVML_TEMPERATURE_GPU", 0)
                ),
                "clock_event_reasons": None if mask is None else list(clock_event_names(int(mask))),
                "memory_used_bytes": None if memory is None else int(memory.used),
                "processes_memory_bytes": sum(int(p.usedGpuMemory or 0) for p in procs),
                "processes": len(procs),
            }
    except lib.NVMLError as error:
        return {"nvml": library_failure(lib, error)}
