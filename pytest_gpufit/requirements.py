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
from pytest_gpufit.hardware.records import Gpu, Inventory
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
        )


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
