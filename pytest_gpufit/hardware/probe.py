"""Build the inventory a session uses: simulated cards, a provider's, or NVML's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import simulated_gpus, simulated_links
from pytest_gpufit.hardware.environment import software_environment
from pytest_gpufit.hardware.nvml import probe_nvml
from pytest_gpufit.hardware.records import Gpu, Inventory


def build_inventory(
    simulate: str | None = None,
    devices: tuple[int, ...] | None = None,
    provider: Callable[[], Inventory | None] | None = None,
    what: str = "--gpufit-devices",
) -> Inventory:
    """The session's inventory; ``devices`` keeps only those GPU indices (``what`` names the
    setting in errors)."""
    if simulate:
        gpus = simulated_gpus(simulate)
        inventory = Inventory(
            gpus=gpus,
            environment=software_environment(),
            source="simulated",
            links=simulated_links(gpus),
        )
    else:
        inventory = (provider() if provider else None) or _nvml()
    if devices is None or not inventory.gpus:
        return inventory
    unknown = [d for d in devices if d not in {g.index for g in inventory.gpus}]
    if unknown:
        have = ", ".join(f"GPU{g.index}" for g in inventory.gpus)
        where = "in the simulated setup" if simulate else "on this machine"
        raise GpufitError(f"{what}: no GPU{unknown[0]} {where} (it has {have})")
    kept = tuple(g for g in inventory.gpus if g.index in devices)
    return Inventory(
        gpus=kept,
        environment=inventory.environment,
        source=inventory.source,
        reason=inventory.reason,
        warnings=inventory.warnings,
        links=tuple(x for x in inventory.links if {x.a, x.b} <= set(devices)),
    )


def _nvml() -> Inventory:
    return probe_nvml()


def visible_devices(gpus: Sequence[Gpu], indices: Iterable[int], outer: str | None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value that selects these GPUs in a child process.

    An entry of the outer ``CUDA_VISIBLE_DEVICES`` where it has one (the child reads it in the
    same numbering), else the GPU's UUID (immune to CUDA's device order), else its index.

    >>> from pytest_gpufit.hardware.catalog import simulated_gpus, simulated_links
    >>> visible_devices(simulated_gpus("4*t4"), [1, 3], "4,5,6,7")
    '5,7'
    >>> visible_devices(simulated_gpus("2*t4"), [1], None)
    '1'
    """
    tokens = [t.strip() for t in outer.split(",")] if outer else None
    uuids = {g.index: g.uuid for g in gpus}

    def token(index: int) -> str:
        if tokens is not None and index < len(tokens):
            return tokens[index]
        return uuids.get(index) or str(index)

    return ",".join(token(i) for i in indices)
