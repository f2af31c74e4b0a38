"""pytest-xdist: give each worker its own GPU(s) before anything in it touches CUDA.

The controller plans groups of ``--gpufit-gpus-per-worker`` GPUs from its own inventory (which
already honours an outer ``CUDA_VISIBLE_DEVICES``) and sets ``CUDA_VISIBLE_DEVICES`` inside each
worker process as soon as its gateway exists, before the worker imports pytest or any test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from pytest_gpufit.hardware.probe import visible_devices
from pytest_gpufit.hardware.records import Gpu, Inventory, links_among

PLAN = "gpufit_plan"  # the xdist workerinput key of a worker's device plan
DIST = "gpufit_dist"  # the key of the controller's --dist mode (a worker's own reads "no")

Group = tuple[tuple[int, ...], str]


def plan(gpus: Sequence[Gpu], per_worker: int, workers: int, outer: str | None) -> list[Group]:
    """For each worker: (GPU indices of the controller's inventory, CUDA_VISIBLE_DEVICES value).

    Workers beyond the number of groups share groups round-robin (``sharing`` says so).

    >>> from pytest_gpufit.hardware.catalog import simulated_gpus
    >>> plan(simulated_gpus("4*h100-sxm"), 2, 2, "4,5,6,7")
    [((0, 1), '4,5'), ((2, 3), '6,7')]
    """
    indices = [g.index for g in gpus]
    groups = [tuple(indices[i : i + per_worker]) for i in range(0, len(indices), per_worker)]
    if not groups:
        return []
    out = []
    for worker in range(workers):
        group = groups[worker % len(groups)]
        out.append((group, visible_devices(gpus, group, outer)))
    return out


def sharing(groups: Sequence[Group]) -> list[str]:
    """One warning per GPU group that more than one worker holds.

    >>> sharing([((0,), "0"), ((0,), "0")])[0][:50]
    'gpufit: WARNING: xdist workers gw0, gw1 share GPU0'
    """
    holders: dict[tuple[int, ...], list[str]] = {}
    for i, (group, _) in enumerate(groups):
        holders.setdefault(group, []).append(f"gw{i}")
    return [
        f"gpufit: WARNING: xdist workers {', '.join(workers)} share "
        f"{','.join(f'GPU{g}' for g in group)}: they compete for its memory and time "
        "(fewer workers with -n, or -n auto, gives each its own)"
        for group, workers in holders.items()
        if len(workers) > 1
    ]


def pinned_to(inventory: Inventory, plan: Any) -> Inventory:
    """A worker's view of its ``WorkerPlan``: the controller set CUDA_VISIBLE_DEVICES, so NVML
    already shows only its GPUs; simulated cards are narrowed here the same way."""
    gpus, links = inventory.gpus, inventory.links
    if inventory.simulated:
        by_index = {g.index: g for g in gpus}
        kept = [i for i in plan.group if i in by_index]
        gpus = tuple(replace(by_index[i], index=n) for n, i in enumerate(kept))
        links = links_among(links, kept)
    note = (
        f"xdist worker {plan.worker} holds {len(gpus)} GPU(s): "
        f"CUDA_VISIBLE_DEVICES={plan.visible} (--gpufit-gpus-per-worker)"
    )
    return replace(inventory, gpus=gpus, pinned=note, links=links)


def auto_workers(gpu_count: int, per_worker: int) -> int | None:
    """One worker per GPU group; None (xdist decides) without GPUs."""
    return math.ceil(gpu_count / per_worker) if gpu_count else None


def worker_number(worker_id: str) -> int:
    """``gw3`` -> 3."""
    digits = "".join(c for c in worker_id if c.isdigit())
    return int(digits) if digits else 0


class XdistPinning:
    """Controller-side xdist hooks; registered only when xdist is installed.

    The controller plans once, from its own inventory (``--gpufit-devices`` applied, in its
    numbering), and hands each worker its part through ``workerinput``.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.groups: list[Group] = []
        self.warnings: list[str] = []

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: Sequence[Any]) -> None:
        self.groups = plan(
            self.session.inventory.gpus,
            self.session.settings.gpus_per_worker,
            len(specs),
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        self.warnings = sharing(self.groups)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for line in self.warnings:
            if reporter is not None:
                reporter.write_line(line, yellow=True, bold=True)

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
        # Always a plan, even "no GPUs": a worker then never re-applies the device filter.
        data: dict[str, Any] = {"group": None, "visible": None}
        if self.groups:
            group, value = self.groups[worker_number(node.gateway.id) % len(self.groups)]
            data = {"group": list(group), "visible": value}
        node.workerinput[PLAN] = data
        # xdist sets a worker's own --dist to "no": the worker that warns of a launched
        # target dealt to several workers (``suites.items.split_launches``) hears it here.
        node.workerinput[DIST] = str(node.config.getoption("dist", "no"))

    def summary(self) -> list[str]:
        if not self.groups:
            return []
        parts = [
            f"gw{i} -> {','.join(f'GPU{g}' for g in group)}"
            for i, (group, _) in enumerate(self.groups)
        ]
        return [f"gpufit: xdist workers pinned: {'; '.join(parts)}", *self.warnings]
