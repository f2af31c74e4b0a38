"""A fake ``pynvml`` at the library boundary (the way gpustat's tests fake it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

MIB = 2**20


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's names
    pass


class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    pass


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
    pass


@dataclass
class FakeCard:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-11111111-aaaa"
    total_mib: int = 81559
    used_mib: int = 512
    cc: tuple[int, int] = (9, 0)
    arch: int = 9
    bus_width: int = 5120
    mem_clock: int = 2619
    sms: int = 132
    not_supported: set[str] = field(default_factory=set)  # NVML function names
    lost: bool = False
    pcie_gen: tuple[int, int] = (1, 5)  # current (an idle card downtrains), max
    pcie_width: tuple[int, int] = (16, 16)
    clock_events: int = 0x1  # gpu_idle
    power_mw: tuple[int, int] = (700000, 700000)  # enforced, default


@dataclass
class FakeLink:
    """What NVML says about one pair: common ancestor (NVML_TOPOLOGY_* value) and P2P status
    (NVML_P2P_STATUS_* value) per capability; a capability missing from ``p2p`` is refused
    as not supported by the library (an old driver), as is the topology when it is None."""

    topology: int | None = 30  # NVML_TOPOLOGY_HOSTBRIDGE
    p2p: dict[str, int] = field(default_factory=dict)  # read, write, nvlink, atomics -> status


OK, NOT_SUPPORTED, CHIPSET, DISABLED = 0, 5, 1, 4  # NVML_P2P_STATUS_*
P2P_CAPS = {0: "read", 1: "write", 2: "nvlink", 3: "atomics"}


def statuses(read: int, write: int, nvlink: int, atomics: int) -> dict[str, int]:
    return {"read": read, "write": write, "nvlink": nvlink, "atomics": atomics}


# Scenarios as ``nvidia-smi topo -m`` / ``topo -p2p`` would show them.
LINK_SCENARIOS = {
    # Two SXM cards on an NVLink (NV18); PCIe-wise they meet only at the system level.
    "nvlink-pair": FakeLink(50, statuses(OK, OK, OK, OK)),
    # Two PCIe cards behind one PCIe switch [PIX], P2P on.
    "pcie-same-switch": FakeLink(10, statuses(OK, OK, NOT_SUPPORTED, NOT_SUPPORTED)),
    # Two PCIe cards on one CPU's root complex [PHB/NODE], P2P on.
    "pcie-same-root": FakeLink(30, statuses(OK, OK, NOT_SUPPORTED, NOT_SUPPORTED)),
    # One card per CPU socket [SYS]: the chipset does not carry P2P across the socket link.
    "across-sockets-p2p-off": FakeLink(50, statuses(CHIPSET, CHIPSET, NOT_SUPPORTED, CHIPSET)),
    # P2P turned off by the driver (a registry key / module parameter), same switch.
    "p2p-disabled": FakeLink(10, statuses(DISABLED, DISABLED, NOT_SUPPORTED, DISABLED)),
    # A driver that answers neither query.
    "no-support": FakeLink(None, {}),
}


class FakeNvml:
    """Enough of pynvml for the probe; ``init_error`` makes nvmlInit raise.

    ``links`` maps a pair of NVML indices (either order) to what NVML says about it; a pair
    left out answers ``NotSupported`` to every query."""

    NVMLError = NVMLError
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVML_CLOCK_MEM = 2

    def __init__(
        self,
        cards: list[FakeCard],
        driver: str = "550.54.15",
        cuda: int = 12040,
        init_error: type[Exception] | None = None,
        links: dict[tuple[int, int], FakeLink] | None = None,
    ) -> None:
        self.cards = cards
        self.links = {tuple(sorted(pair)): link for pair, link in (links or {}).items()}
        self.driver = driver
        self.cuda = cuda
        self.init_error = init_error
        self.initialised = 0

    def _card(self, handle: Any, fn: str) -> FakeCard:
        card: FakeCard = self.cards[handle]
        if card.lost:
            raise NVMLError_GpuIsLost("GPU is lost")
        if fn in card.not_supported:
            raise NVMLError_NotSupported("Not Supported")
        return card

    def nvmlInit(self) -> None:  # noqa: N802
        if self.init_error:
            raise self.init_error("init failed")
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:  # noqa: N802
        return next(i for i, c in enumerate(self.cards) if c.uuid == uuid)

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return self._card(h, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, h: int) -> bytes:  # noqa: N802
        return self._card(h, "nvmlDeviceGetName").name.encode()  # old bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:  # noqa: N802
        c = self._card(h, "nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(
            total=c.total_mib * MIB, used=c.used_mib * MIB, free=(c.total_mib - c.used_mib) * MIB
        )

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:  # noqa: N802
        return self._card(h, "nvmlDeviceGetCudaComputeCapability").cc

    def nvmlDeviceGetArchitecture(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetArchitecture").arch

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:  # noqa: N802
        self._card(h, "nvmlDeviceGetPciInfo")
        return SimpleNamespace(busId=f"00000000:{h + 1:02X}:00.0")

    def nvmlDeviceGetMemoryBusWidth(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetMemoryBusWidth").bus_width

    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetMaxClockInfo").mem_clock

    def nvmlDeviceGetAttributes(self, h: int) -> Any:  # noqa: N802
        return SimpleNamespace(multiprocessorCount=self._card(h, "nvmlDeviceGetAttributes").sms)

    def nvmlDeviceGetMigMode(self, h: int) -> tuple[int, int]:  # noqa: N802
        self._card(h, "nvmlDeviceGetMigMode")
        return (0, 0)

    def nvmlDeviceGetEccMode(self, h: int) -> tuple[int, int]:  # noqa: N802
        self._card(h, "nvmlDeviceGetEccMode")
        return (1, 1)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetCurrPcieLinkGeneration").pcie_gen[0]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetMaxPcieLinkGeneration").pcie_gen[1]

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetCurrPcieLinkWidth").pcie_width[0]

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetMaxPcieLinkWidth").pcie_width[1]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetCurrentClocksEventReasons").clock_events

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetCurrentClocksThrottleReasons").clock_events

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetEnforcedPowerLimit").power_mw[0]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: int) -> int:  # noqa: N802
        return self._card(h, "nvmlDeviceGetPowerManagementDefaultLimit").power_mw[1]

    def _link(self, h1: int, h2: int) -> FakeLink:
        for h in (h1, h2):
            self._card(h, "link")
        link = self.links.get(tuple(sorted((h1, h2))))
        if link is None:
            raise NVMLError_NotSupported("Not Supported")
        return link

    def nvmlDeviceGetTopologyCommonAncestor(self, h1: int, h2: int) -> int:  # noqa: N802
        level = self._link(h1, h2).topology
        if level is None:
            raise NVMLError_NotSupported("Not Supported")
        return level

    def nvmlDeviceGetP2PStatus(self, h1: int, h2: int, index: int) -> int:  # noqa: N802
        status = self._link(h1, h2).p2p.get(P2P_CAPS.get(index, "?"))
        if status is None:
            raise NVMLError_NotSupported("Not Supported")
        return status


class OldFakeNvml(FakeNvml):
    """Bindings from before nvml 12.535 renamed throttle reasons to clock event reasons."""

    def __getattribute__(self, name: str) -> Any:
        if name == "nvmlDeviceGetCurrentClocksEventReasons":
            raise AttributeError(name)
        return super().__getattribute__(name)


RTX_4090 = dict(
    name="NVIDIA GeForce RTX 4090",
    uuid="GPU-22222222-bbbb",
    total_mib=24564,
    cc=(8, 9),
    arch=8,
    bus_width=384,
    mem_clock=10501,
    sms=128,
)
