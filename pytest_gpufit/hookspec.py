"""Extension points other packages can implement (``pytest_gpufit_*``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_gpufit.hardware.records import Inventory


@pytest.hookspec(firstresult=True)
def pytest_gpufit_probe(config: pytest.Config) -> Inventory | None:
    """Return the machine's inventory instead of probing NVML, or None to let NVML probe.

    A ROCm provider, say, in a ``conftest.py`` or a plugin::

        def pytest_gpufit_probe(config):
            from pytest_gpufit.hardware.records import Gpu, Inventory
            return Inventory(gpus=(Gpu(index=0, name="AMD Instinct MI300X",
                                       memory_total_bytes=192 * 2**30, vendor="amd",
                                       architecture="gfx942"),), source="rocm")

    Under ``--gpufit-simulate`` it is called only to judge ``--gpufit-expect``, which always
    describes the real machine.
    """
