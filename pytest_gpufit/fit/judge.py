"""``requires_fit``: the fit engine as a device clause of ``evaluate``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pytest_gpufit.fit.estimate import estimate
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.requirements import FitRequest
from pytest_gpufit.units import format_gb


def fit_judge(base: Path | None = None) -> Callable[[FitRequest, Gpu], tuple[str, str] | None]:
    """A clause that holds when ``instances`` copies of the model fit on one device."""

    def judge(fit: FitRequest, gpu: Gpu) -> tuple[str, str] | None:
        spec = load_spec(fit.model, base)
        est = estimate(spec, fit.dtype, fit.context, fit.batch)
        need = est.total_bytes * fit.instances
        if gpu.memory_total_bytes >= need:
            return None
        copies = f"{fit.instances} x " if fit.instances > 1 else ""
        return (
            f"{format_gb(need)} for {copies}{spec.name} in {est.dtype} at context "
            f"{est.context}, batch {est.batch} (estimate)",
            format_gb(gpu.memory_total_bytes),
        )

    return judge
