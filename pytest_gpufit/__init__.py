"""pytest-gpufit: gate tests and LLM suites on the GPU at hand.

The decorators below are the markers, validated when the test module is imported::

    from pytest_gpufit import requires_vram

    @requires_vram(60)
    def test_big_model(): ...

They are generated from the marker table ``pytest_gpufit.markers.SPECS``:
``requires_gpu(count=1, name=None)``, ``requires_vram(size, free=False)``,
``requires_compute_capability(capability)``, ``requires_dtype(*dtypes)``,
``requires_driver(version)``, ``requires_cuda(version)``, ``requires_torch(version)``,
``requires_fit(model, dtype='bf16', context=None, batch=1, instances=1, gpus=1,
engine=None)``, ``requires_p2p(count=2, topology=None)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.markers import SPECS, make_decorator

if TYPE_CHECKING:  # the names for type checkers; tests/test_markers_table.py keeps them in step
    from collections.abc import Callable

    import pytest

    requires_gpu: Callable[..., pytest.MarkDecorator]
    requires_vram: Callable[..., pytest.MarkDecorator]
    requires_compute_capability: Callable[..., pytest.MarkDecorator]
    requires_dtype: Callable[..., pytest.MarkDecorator]
    requires_driver: Callable[..., pytest.MarkDecorator]
    requires_cuda: Callable[..., pytest.MarkDecorator]
    requires_torch: Callable[..., pytest.MarkDecorator]
    requires_fit: Callable[..., pytest.MarkDecorator]
    requires_p2p: Callable[..., pytest.MarkDecorator]

for _spec in SPECS:
    globals()[_spec.name] = make_decorator(_spec)
del _spec

__all__ = ["GpufitError", *sorted(spec.name for spec in SPECS)]
__version__ = "0.1.0"
