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


class FakeNvml:
    """Enough of pynvml for the probe; ``init_error`` makes nvmlInit raise."""

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
    ) -> None:
        self.cards = cards
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
