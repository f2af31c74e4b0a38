"""pytest-xdist: give each worker its own GPU(s) before anything in it touches CUDA.

The controller plans groups of ``--gpufit-gpus-per-worker`` GPUs from its own inventory (which
already honours an outer ``CUDA_VISIBLE_DEVICES``) and sets ``CUDA_VISIBLE_DEVICES`` inside each
worker process as soon as its gateway exists, before the worker imports pytest or any test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from pytest_gpufit.hardware.records import Gpu, Inventory

Group = tuple[tuple[int, ...], str]


def plan(gpus: Sequence[Gpu], per_worker: int, workers: int, outer: str | None) -> list[Group]:
    """For each worker: (GPU indices of the controller's inventory, CUDA_VISIBLE_DEVICES value).

    Workers beyond the number of groups share groups round-robin.

    >>> from pytest_gpufit.hardware.catalog import simulated_gpus
    >>> plan(simulated_gpus("4*h100-sxm"), 2, 2, "4,5,6,7")
    [((0, 1), '4,5'), ((2, 3), '6,7')]
    """
    indices = [g.index for g in gpus]
    groups = [tuple(indices[i : i + per_worker]) for i in range(0, len(indices), per_worker)]
    if not groups:
        return []
    tokens = [t.strip() for t in outer.split(",")] if outer else None
    uuids = {g.index: g.uuid for g in gpus}

    def visible(index: int) -> str:
        if tokens is not None and index < len(tokens):
            return tokens[index]
        return uuids.get(index) or str(index)

    out = []
    for worker in range(workers):
        group = groups[worker % len(groups)]
        out.append((group, ",".join(visible(i) for i in group)))
    return out


def pinned_to(inventory: Inventory, worker: dict[str, Any]) -> Inventory:
    """A worker's view: the controller set CUDA_VISIBLE_DEVICES, so NVML already shows only its
    GPUs; simulated cards are narrowed here the same way."""
    from dataclasses import replace

    group = list(worker["gpufit_group"])
    gpus = inventory.gpus
    if inventory.simulated:
        by_index = {g.index: g for g in gpus}
        gpus = tuple(replace(by_index[i], index=n) for n, i in enumerate(group) if i in by_index)
    note = (
        f"xdist worker {worker.get('workerid')} holds {len(gpus)} GPU(s): "
        f"CUDA_VISIBLE_DEVICES={worker.get('gpufit_visible')} (--gpufit-gpus-per-worker)"
    )
    return replace(inventory, gpus=gpus, pinned=note)


def auto_workers(gpu_count: int, per_worker: int) -> int | None:
    """One worker per GPU group; None (xdist decides) without GPUs."""
    return math.ceil(gpu_count / per_worker) if gpu_count else None


def worker_number(worker_id: str) -> int:
    """``gw3`` -> 3."""
    digits = "".join(c for c in worker_id if c.isdigit())
    return int(digits) if digits else 0


class XdistPinning:
    """Controller-side xdist hooks; registered only when xdist is installed."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.groups: list[Group] = []

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: Sequence[Any]) -> None:
        import os

        inventory = self.state.inventory
        self.groups = plan(
            inventory.gpus,
            self.state.settings.gpus_per_worker,
            len(specs),
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        )

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_newgateway(self, gateway: Any) -> None:
        if not self.groups:
            return
        _, value = self.groups[worker_number(gateway.id) % len(self.groups)]
        # Runs in the worker process before it imports pytest: nothing can have used CUDA yet.
        gateway.remote_exec(
            f"import os; os.environ['CUDA_VISIBLE_DEVICES'] = {value!r}"
        ).waitclose()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.groups:
            group, value = self.groups[worker_number(node.gateway.id) % len(self.groups)]
            node.workerinput["gpufit_group"] = list(group)
            node.workerinput["gpufit_visible"] = value

    def summary(self) -> list[str]:
        if not self.groups:
            return []
        parts = [
            f"gw{i} -> {','.join(f'GPU{g}' for g in group)}"
            for i, (group, _) in enumerate(self.groups)
        ]
        return [f"gpufit: xdist workers pinned: {'; '.join(parts)}"]
