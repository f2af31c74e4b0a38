"""``requires_fit`` over one device or a tensor-parallel split, by raw bytes or by an engine.

The clause is judged per device, as every clause of ``evaluate`` is: with ``gpus=N`` a device
holds when its part of one copy split N ways fits (a tensor-parallel engine gives each rank the
same share), and the marker asks for N such devices. With ``engine=`` the clause holds when that
engine's plan for the split starts on a card like this one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pytest_gpufit.engines.knobs import parse_knobs
from pytest_gpufit.engines.planning import plan
from pytest_gpufit.engines.registry import engine
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.context import check_context
from pytest_gpufit.fit.estimate import estimate, lacks_kernel, per_card_bytes, usable_bytes
from pytest_gpufit.fit.request import FitRequest
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.units import GIB, format_gb

Clause = Callable[[FitRequest, Gpu], "tuple[str, str] | None"]


def fit_judge(base: Path | None = None) -> Clause:
    """A device clause for ``requires_fit``; model paths resolve against ``base``."""

    def judge(fit: FitRequest, gpu: Gpu) -> tuple[str, str] | None:
        spec = load_spec(fit.model, base)
        check_context(spec, fit.context, "requires_fit context")
        est = estimate(spec, fit.dtype, fit.context, fit.batch)
        split = f", tensor parallel over {fit.gpus} GPUs" if fit.gpus > 1 else ""
        if lacks_kernel(est.weight_format, gpu):
            # The table's "unsupported precision": no kernel, native or weight-only, on this card.
            native = ", ".join(gpu.native_dtypes) or "none known"
            return (
                f"a kernel for {spec.name}'s {est.weight_format} weights (native or emulated)",
                f"CC {gpu.cc_text}, native: {native}",
            )
        if fit.engine is not None:
            try:
                asked = engine(fit.engine).knobs_for(
                    fit.context, fit.batch, spec.max_position_embeddings
                )
                knobs = parse_knobs(fit.engine, **asked)
            except GpufitError as error:  # batch x context past what the engine accepts
                raise GpufitError(
                    f"requires_fit batch={fit.batch}, context={fit.context}, engine="
                    f"{fit.engine!r}: the engine setting it needs is refused: {error}"
                ) from None
            the_plan = plan(spec, est.dtype, gpu, fit.gpus, knobs)
            # The engine words memory in GiB (its log does); the card is said in the same unit.
            card = (
                f"{the_plan.usable_bytes_per_gpu / GIB:.2f} GiB usable of "
                f"{gpu.memory_total_bytes / GIB:.2f} GiB"
            )
            if not the_plan.starts:
                return (
                    f"{spec.name} in {est.dtype} to start on {fit.engine}{split} "
                    # The engine's words name its flags; say which marker argument sets them.
                    f"({the_plan.reason}; planned at {the_plan.max_model_len:,} tokens per "
                    "request, set by requires_fit(context=...), the model's maximum when left "
                    "out)",
                    card,
                )
            if the_plan.max_concurrency < fit.batch:
                # Starting is not serving: batch names that many requests of the context at once.
                return (
                    f"{spec.name} in {est.dtype} on {fit.engine}{split} to hold {fit.batch} "
                    f"requests of {the_plan.max_model_len:,} tokens at once (plan)",
                    f"KV cache for {the_plan.max_concurrency:.2f} of them ({card})",
                )
            return None
        if fit.gpus == 1:
            need = est.total_bytes * fit.instances
        else:
            need = per_card_bytes(spec, est, fit.gpus, est.context) * fit.instances
        # What CUDA can allocate, not NVML's total (an H100 80GB: 79.19 of 79.65 GiB).
        usable, _ = usable_bytes(gpu)
        if usable >= need:
            return None
        copies = f"{fit.instances} x " if fit.instances > 1 else ""
        per_card = " per GPU" if fit.gpus > 1 else ""
        return (
            f"{format_gb(need)}{per_card} for {copies}{spec.name} in {est.dtype} at context "
            f"{est.context}, batch {est.batch}{split} (estimate)",
            f"{format_gb(usable)} usable of {format_gb(gpu.memory_total_bytes)}",
        )

    return judge
