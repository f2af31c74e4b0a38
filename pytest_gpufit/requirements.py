"""One ``Requirement`` type for markers, decorators and YAML, judged by one ``evaluate``.

Markers and YAML keys become a ``Requirement`` in ``pytest_gpufit.markers``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from pytest_gpufit.fit.request import FitRequest
from pytest_gpufit.hardware.records import LINK_LEVELS, TOPOLOGY_TEXT, Gpu, GpuLink, Inventory
from pytest_gpufit.units import format_gb


@dataclass(frozen=True)
class Requirement:
    """What a test needs; every field is met when left at its default."""

    count: int = 1
    names: tuple[str, ...] = ()
    vram_bytes: int | None = None
    vram_free: bool = False
    compute_capability: tuple[int, int] | None = None
    dtypes: tuple[str, ...] = ()
    driver: str | None = None
    cuda: str | None = None
    torch: str | None = None
    fits: tuple[FitRequest, ...] = ()
    p2p: bool = False  # every pair of the ``count`` devices reads and writes peer to peer
    topology: str | None = None  # and is joined no farther out than this (LINK_LEVELS)

    def merge(self, other: Requirement) -> Requirement:
        """Both must hold (several markers on one test)."""

        def spec(a: str | None, b: str | None) -> str | None:
            return ",".join(s for s in (a, b) if s) or None

        def larger(a: Any, b: Any) -> Any:
            return b if a is None else a if b is None else max(a, b)

        return Requirement(
            count=max(self.count, other.count),
            names=self.names + tuple(n for n in other.names if n not in self.names),
            vram_bytes=larger(self.vram_bytes, other.vram_bytes),
            vram_free=self.vram_free or other.vram_free,
            compute_capability=larger(self.compute_capability, other.compute_capability),
            dtypes=self.dtypes + tuple(d for d in other.dtypes if d not in self.dtypes),
            driver=spec(self.driver, other.driver),
            cuda=spec(self.cuda, other.cuda),
            torch=spec(self.torch, other.torch),
            fits=self.fits + other.fits,
            p2p=self.p2p or other.p2p,
            topology=_nearer(self.topology, other.topology),
        )


def _nearer(a: str | None, b: str | None) -> str | None:
    """The tighter of two topology bounds."""
    if a is None or b is None:
        return a or b
    return min(a, b, key=LINK_LEVELS.index)


@dataclass(frozen=True)
class Verdict:
    """Whether a requirement holds; ``devices`` are the GPU indices that satisfy it."""

    ok: bool
    reason: str
    devices: tuple[int, ...] = ()
    simulated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- judging -------------------------------------------------------------------------------

# A device clause returns None when met, else (what is needed, what this device has).
Clause = Callable[[Gpu], "tuple[str, str] | None"]
FitJudge = Callable[[FitRequest, Gpu], "tuple[str, str] | None"]


def _device_clauses(req: Requirement, fit_judge: FitJudge | None) -> list[Clause]:
    clauses: list[Clause] = []
    for wanted in req.names:

        def name_clause(g: Gpu, wanted: str = wanted) -> tuple[str, str] | None:
            if wanted.lower() in g.name.lower():
                return None
            return f"a GPU whose name contains {wanted!r}", "another name"

        clauses.append(name_clause)
    if req.vram_bytes is not None:
        need = req.vram_bytes

        def vram_clause(g: Gpu) -> tuple[str, str] | None:
            if req.vram_free:
                free = g.memory_free_bytes
                if free is not None and free >= need:
                    return None
                has = "an unknown amount free" if free is None else f"{format_gb(free)} free"
                return f"{format_gb(need)} of free GPU memory", has
            if g.memory_total_bytes >= need:
                return None
            return f"{format_gb(need)} of GPU memory", format_gb(g.memory_total_bytes)

        clauses.append(vram_clause)
    if req.compute_capability is not None:
        cc = req.compute_capability

        def cc_clause(g: Gpu) -> tuple[str, str] | None:
            if g.compute_capability is not None and g.compute_capability >= cc:
                return None
            return f"compute capability >= {cc[0]}.{cc[1]}", f"{g.cc_text}"

        clauses.append(cc_clause)
    for dtype in req.dtypes:

        def dtype_clause(g: Gpu, dtype: str = dtype) -> tuple[str, str] | None:
            if dtype in g.native_dtypes:
                return None
            native = ", ".join(g.native_dtypes) or "none known"
            return f"native {dtype} support", f"CC {g.cc_text}, native: {native}"

        clauses.append(dtype_clause)
    if fit_judge is not None:
        judge = fit_judge
        for fit in req.fits:

            def fit_clause(g: Gpu, fit: FitRequest = fit) -> tuple[str, str] | None:
                return judge(fit, g)

            clauses.append(fit_clause)
    return clauses


def _version_problems(req: Requirement, inventory: Inventory) -> list[str]:
    env = inventory.environment
    checks: list[tuple[str | None, str, str | None]] = [
        (req.driver, "NVIDIA driver", env.driver_version),
        (req.cuda, "CUDA (driver)", env.cuda_driver_version),
        (req.torch, "torch", env.torch_version),
    ]
    if req.cuda and env.cuda_runtime_version:
        checks.append((req.cuda, "CUDA (torch runtime)", env.cuda_runtime_version))
    problems = []
    for spec, what, have in checks:
        if not spec:
            continue
        if have is None:
            if inventory.simulated and what != "torch":
                continue  # simulated cards carry no driver; the plan is about the card
            problems.append(f"needs {what} {spec}; this machine has none")
            continue
        try:
            met = Version(have) in SpecifierSet(spec, prereleases=True)
        except InvalidVersion:
            met = False
        if not met:
            problems.append(f"needs {what} {spec}; this machine has {have}")
    return problems


def evaluate(req: Requirement, inventory: Inventory, fit_judge: FitJudge | None = None) -> Verdict:
    """Judge a requirement against the machine (or the simulated cards).

    >>> from pytest_gpufit.hardware.catalog import catalog_gpu
    >>> inv = Inventory(gpus=(catalog_gpu("rtx-4090"),), source="simulated")
    >>> evaluate(Requirement(vram_bytes=60 * 10**9), inv).reason
    'needs 60 GB of GPU memory; GPU0 NVIDIA GeForce RTX 4090 has 25.8 GB'
    """
    sim = inventory.simulated
    if not inventory.gpus:
        return Verdict(False, f"no GPU: {inventory.reason or 'none found'}", simulated=sim)
    problems = _version_problems(req, inventory)
    clauses = _device_clauses(req, fit_judge)
    failures: dict[int, list[tuple[str, str]]] = {}
    for gpu in inventory.gpus:
        failures[gpu.index] = [f for f in (c(gpu) for c in clauses) if f is not None]
    good = [g.index for g in inventory.gpus if not failures[g.index]]
    if len(good) < req.count:
        problems.insert(0, _device_reason(req, inventory, failures, len(good)))
    if problems:
        return Verdict(False, "; ".join(problems), simulated=sim)
    devices = tuple(good[: req.count])
    if req.p2p and not problems:
        group, trouble = _p2p_group(req, inventory, good)
        if group is None:
            return Verdict(False, trouble, simulated=sim)
        devices = group
    labels = {g.index: g.label for g in inventory.gpus}
    return Verdict(True, ", ".join(labels[i] for i in devices), devices, simulated=sim)


def _device_reason(
    req: Requirement, inventory: Inventory, failures: dict[int, list[tuple[str, str]]], n_good: int
) -> str:
    if req.count > len(inventory.gpus):
        found = ", ".join(g.label for g in inventory.gpus)
        pinned = f"; {inventory.pinned}" if inventory.pinned else ""
        return f"needs {req.count} GPUs; found {len(inventory.gpus)} ({found}){pinned}"
    by_need: dict[str, list[str]] = {}
    for gpu in inventory.gpus:
        for need, has in failures[gpu.index]:
            by_need.setdefault(need, []).append(f"{gpu.label} has {has}")
    parts = [f"needs {need}; {', '.join(has)}" for need, has in by_need.items()]
    text = "; ".join(parts)
    if req.count > 1:
        text = f"needs {req.count} GPUs that meet every requirement, {n_good} do: {text}"
    return text


# ---- links between the devices (requires_p2p) -----------------------------------------------

_SEARCH_STEPS = 100_000  # groups tried before giving up (a machine has a handful of GPUs)


def link_problems(link: GpuLink | None, topology: str | None) -> list[str]:
    """Why a pair does not meet ``requires_p2p`` (empty when it does).

    >>> link_problems(GpuLink(0, 1, "system", "chipset-not-supported", "ok"), None)
    ['P2P read not supported by the chipset (topology: system, across CPU sockets [SYS])']
    >>> link_problems(GpuLink(0, 1, "host-bridge", "ok", "ok"), "single-switch")
    ["joined through a CPU's PCIe host bridge [PHB], farther than single-switch"]
    """
    if link is None:
        return ["no link facts (the probe could not read topology and P2P)"]
    where = link.where()
    out = [f"{problem} ({where})" for problem in link.p2p_problems()]
    if topology is not None and link.p2p is not False:
        level = link.level
        if level is None:
            out.append(f"{where}, so the bound {topology} cannot be judged")
        elif LINK_LEVELS.index(level) > LINK_LEVELS.index(topology):
            joined = "by NVLink" if level == "nvlink" else TOPOLOGY_TEXT[level]
            out.append(f"joined {joined}, farther than {topology}")
    return out


def _p2p_group(
    req: Requirement, inventory: Inventory, good: list[int]
) -> tuple[tuple[int, ...] | None, str]:
    """The first ``req.count`` devices of ``good`` (index order) that all reach each other,
    or None and why no such group exists."""
    count = max(req.count, 2)
    bound = f", joined {req.topology} or nearer" if req.topology else ""
    need = f"needs P2P between {count} GPUs{bound}"
    if len(good) < count:
        return None, f"{need}; only {len(good)} GPU(s) meet the other requirements"
    problems: dict[tuple[int, int], list[str]] = {}
    links = {(link.a, link.b): link for link in inventory.links}

    def fine(a: int, b: int) -> bool:
        key = (min(a, b), max(a, b))
        if key not in problems:
            link = links.get(key)
            problems[key] = (
                # simulated_links records no pairs past MAX_LINKED_GPUS cards: nothing was probed
                ["no link facts (a simulated setup of more than 64 cards has no pair records)"]
                if link is None and inventory.source == "simulated"
                else link_problems(link, req.topology)
            )
        return not problems[key]

    steps = 0
    # Depth-first over index order: a group grows only by devices that reach all its members.
    stack: list[tuple[tuple[int, ...], int]] = [((), 0)]
    while stack and steps < _SEARCH_STEPS:
        group, start = stack.pop()
        if len(group) == count:
            return group, ""
        steps += 1
        for position in range(len(good) - 1, start - 1, -1):
            if len(group) + len(good) - position < count:
                continue  # too few devices left from here to complete the group
            device = good[position]
            if all(fine(member, device) for member in group):
                stack.append(((*group, device), position + 1))
    for n, first in enumerate(good):  # the reason names every pair that fails, searched or not
        for second in good[n + 1 :]:
            fine(first, second)
    bad = [(pair, texts) for pair, texts in sorted(problems.items()) if texts]
    # The budget ran out with groups left to try: the pairs below are not proof that none exists.
    cut = f"; none found among {len(good)} GPUs within the search" if stack else ""
    if not bad:
        return None, f"{need}{cut or '; no such group'}"
    shown = "; ".join(f"GPU{a}-GPU{b} {', '.join(texts)}" for (a, b), texts in bad[:3])
    more = f"; and {len(bad) - 3} more pairs" if len(bad) > 3 else ""
    return None, f"{need}{cut}; {shown}{more}"
