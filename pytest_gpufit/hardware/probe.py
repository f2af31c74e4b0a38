"""Build the inventory a session uses: simulated cards, a provider's, or NVML's."""

from __future__ import annotations

from collections.abc import Callable

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import simulated_gpus
from pytest_gpufit.hardware.environment import software_environment
from pytest_gpufit.hardware.records import Inventory


def build_inventory(
    simulate: str | None = None,
    devices: tuple[int, ...] | None = None,
    provider: Callable[[], Inventory | None] | None = None,
) -> Inventory:
    """The session's inventory; ``devices`` keeps only those GPU indices."""
    if simulate:
        inventory = Inventory(
            gpus=simulated_gpus(simulate), environment=software_environment(), source="simulated"
        )
    else:
        inventory = (provider() if provider else None) or _nvml()
    if devices is None or not inventory.gpus:
        return inventory
    unknown = [d for d in devices if d not in {g.index for g in inventory.gpus}]
    if unknown:
        have = ", ".join(f"GPU{g.index}" for g in inventory.gpus)
        raise GpufitError(f"--gpufit-devices: no GPU{unknown[0]} on this machine (it has {have})")
    kept = tuple(g for g in inventory.gpus if g.index in devices)
    return Inventory(
        gpus=kept,
        environment=inventory.environment,
        source=inventory.source,
        reason=inventory.reason,
        warnings=inventory.warnings,
    )


def _nvml() -> Inventory:
    from pytest_gpufit.hardware.nvml import probe_nvml  # late: pynvml loads on first probe

    return probe_nvml()
