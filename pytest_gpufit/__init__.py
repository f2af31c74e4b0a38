"""pytest-gpufit: gate tests and LLM suites on the GPU at hand.

The decorators below are the markers, validated when the test module is imported::

    from pytest_gpufit import requires_vram

    @requires_vram(60)
    def test_big_model(): ...
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.requirements import requirement_from_marker

__all__ = [
    "GpufitError",
    "requires_compute_capability",
    "requires_cuda",
    "requires_driver",
    "requires_dtype",
    "requires_fit",
    "requires_gpu",
    "requires_torch",
    "requires_vram",
]
__version__ = "0.1.0"


def _mark(marker: str, /, *args: Any, **kwargs: Any) -> pytest.MarkDecorator:
    __tracebackhide__ = True
    try:
        requirement_from_marker(marker, args, kwargs)
    except GpufitError as error:
        raise GpufitError(str(error)) from None
    decorator: pytest.MarkDecorator = getattr(pytest.mark, marker)(*args, **kwargs)
    return decorator


def requires_gpu(count: int = 1, name: str | None = None) -> pytest.MarkDecorator:
    """At least ``count`` GPUs, each named like ``name`` (a case-insensitive substring)."""
    __tracebackhide__ = True
    return _mark("requires_gpu", count=count, name=name)


def requires_vram(size: int | float | str, free: bool = False) -> pytest.MarkDecorator:
    """GPU memory per device: a bare number is GB (10^9 bytes); or '80GB', '79GiB', '61440MiB'."""
    __tracebackhide__ = True
    return _mark("requires_vram", size, free=free)


def requires_compute_capability(capability: str | float) -> pytest.MarkDecorator:
    """A minimum compute capability, e.g. '8.9'."""
    __tracebackhide__ = True
    return _mark("requires_compute_capability", capability)


def requires_dtype(*dtypes: str) -> pytest.MarkDecorator:
    """Native tensor-core support for every dtype named (bf16, fp16, tf32, fp8, fp4, int8...)."""
    __tracebackhide__ = True
    return _mark("requires_dtype", *dtypes)


def requires_driver(version: str) -> pytest.MarkDecorator:
    """NVIDIA driver version, e.g. '>=550' (a bare version means at least that)."""
    __tracebackhide__ = True
    return _mark("requires_driver", version)


def requires_cuda(version: str) -> pytest.MarkDecorator:
    """CUDA version the driver supports (and torch's CUDA runtime, where torch has one)."""
    __tracebackhide__ = True
    return _mark("requires_cuda", version)


def requires_torch(version: str) -> pytest.MarkDecorator:
    """Installed torch version, e.g. '>=2.4'."""
    __tracebackhide__ = True
    return _mark("requires_torch", version)


def requires_fit(
    model: str, dtype: str = "bf16", context: int | None = None, batch: int = 1, instances: int = 1
) -> pytest.MarkDecorator:
    """The model (a folder, a config.json, or a shipped id) fits on the GPU at this precision."""
    __tracebackhide__ = True
    return _mark(
        "requires_fit", model, dtype=dtype, context=context, batch=batch, instances=instances
    )
