"""The ``allreduce`` suite check: the all-reduce sweep of ``pytest_gpufit.allreduce`` on the GPUs
the target's requirement picked (one NCCL rank each), or on the CPU with gloo."""

from __future__ import annotations

from typing import Any

from pytest_gpufit.allreduce import AllReduceParams, floor_failures, measure
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.suites.context import Context


def run_allreduce(ctx: Context, params: dict[str, Any]) -> None:
    """Measure the sweep: figures into ``ctx.metrics``, broken floors and wrong sums into
    ``ctx.failures``. A GPU target runs on ``ctx.devices`` (its verdict's GPUs, at least two by
    the kind's requirement); ``device: cpu`` runs ``processes`` gloo ranks."""
    options = AllReduceParams(**params)  # validated at collection (suites.kinds)
    on_cpu = ctx.target.device == "cpu"
    if on_cpu and options.backend == "nccl":
        raise GpufitError(
            "backend: nccl runs on GPUs (device: cuda); on the CPU only gloo runs, so leave "
            "backend: out or give device: cuda"
        )
    devices = () if on_cpu else ctx.devices
    if not on_cpu and len(devices) < 2:
        # The kind's requirement asks 2 GPUs of the verdict: reaching here is a bug.
        raise GpufitError(
            f"allreduce on {ctx.target.device} was given {len(devices)} GPU(s) "
            "(an internal error: the requirement asks at least 2)"
        )
    result = measure(options, devices)
    ctx.metrics.update(result.metrics())
    ctx.failures.extend(floor_failures(result, options))
