"""The one evaluate() that markers, decorators and YAML share."""

from __future__ import annotations

import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import simulated_gpus
from pytest_gpufit.hardware.records import Environment, Inventory
from pytest_gpufit.markers import requirement_from_marker
from pytest_gpufit.requirements import Requirement, evaluate


def real(setup: str, **env: str) -> Inventory:
    """Catalog cards presented as a real (non-simulated) machine."""
    return Inventory(gpus=simulated_gpus(setup), environment=Environment(**env), source="nvml")


def req(name: str, *args: object, **kwargs: object) -> Requirement:
    return requirement_from_marker(name, args, kwargs)


@pytest.mark.parametrize(
    ("spec", "driver", "ok"),
    [
        (">=550", "550.54.15", True),
        (">=550", "535.104.05", False),
        ("550", "560.35.03", True),
        (">=550,<560", "560.35.03", False),
        ("==550.*", "550.127.05", True),
    ],
)
def test_driver_versions_compare_as_versions(spec: str, driver: str, ok: bool) -> None:
    verdict = evaluate(req("requires_driver", spec), real("h100-sxm", driver_version=driver))
    assert verdict.ok is ok
    if not ok:
        assert f"needs NVIDIA driver {spec if spec[0] != '5' else '>=' + spec}" in verdict.reason
        assert driver in verdict.reason


def test_version_10_is_newer_than_9_not_older() -> None:
    assert evaluate(req("requires_cuda", ">=9.2"), real("h100-sxm", cuda_driver_version="12.4")).ok
    assert not evaluate(
        req("requires_cuda", ">=12.10"), real("h100-sxm", cuda_driver_version="12.9")
    ).ok


def test_cuda_checks_torch_runtime_too() -> None:
    inv = real("h100-sxm", cuda_driver_version="12.8", cuda_runtime_version="12.1")
    verdict = evaluate(req("requires_cuda", ">=12.4"), inv)
    assert not verdict.ok and "CUDA (torch runtime) >=12.4; this machine has 12.1" in verdict.reason


def test_torch_missing_is_named() -> None:
    verdict = evaluate(req("requires_torch", ">=2.4"), real("h100-sxm"))
    assert not verdict.ok and verdict.reason == "needs torch >=2.4; this machine has none"


def test_free_memory() -> None:
    from dataclasses import replace

    inv = real("h100-sxm")
    busy = replace(inv, gpus=(replace(inv.gpus[0], memory_free_bytes=10 * 10**9),))
    assert evaluate(req("requires_vram", 60), busy).ok
    verdict = evaluate(req("requires_vram", 60, free=True), busy)
    assert not verdict.ok
    assert verdict.reason == (
        "needs 60 GB of free GPU memory; GPU0 NVIDIA H100 80GB HBM3 has 10 GB free"
    )


def test_merge_keeps_the_strictest_of_each() -> None:
    merged = (
        req("requires_vram", 40)
        .merge(req("requires_vram", 80))
        .merge(req("requires_gpu", count=2))
        .merge(req("requires_dtype", "fp8"))
        .merge(req("requires_driver", ">=550"))
        .merge(req("requires_driver", "<570"))
    )
    assert merged.vram_bytes == 80 * 10**9 and merged.count == 2 and merged.dtypes == ("fp8",)
    assert not evaluate(merged, real("2*h100-sxm", driver_version="570.1")).ok
    assert evaluate(merged, real("2*h100-sxm", driver_version="560.1")).ok


def test_devices_are_the_ones_that_qualify() -> None:
    verdict = evaluate(req("requires_dtype", "fp4"), real("h100-sxm,b200,b200"))
    assert verdict.ok and verdict.devices == (1,)


def test_no_gpu() -> None:
    verdict = evaluate(Requirement(), Inventory(reason="NVIDIA driver not loaded"))
    assert not verdict.ok and verdict.reason == "no GPU: NVIDIA driver not loaded"


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("requires_vram", (), {}),
        ("requires_gpu", (1, "x", 3), {}),
        ("requires_dtype", (), {}),
        ("requires_torch", ("latest",), {}),
        ("requires_fit", ("",), {}),
        ("requires_fit", ("m",), {"batch": 0}),
        ("requires_nothing", (), {}),
    ],
)
def test_bad_arguments(name: str, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(GpufitError, match=name.split("_")[0]):
        requirement_from_marker(name, args, kwargs)
