"""A small project for the fleet tests: six tests, a pool of two classes, a fake probe."""

from __future__ import annotations

TESTS = """
import pytest

@pytest.mark.requires_gpu(count=2)
def test_two_gpus(): pass

@pytest.mark.requires_vram(90)
def test_ninety_gb(): pass

@pytest.mark.requires_dtype("fp4")
def test_fp4(): pass

@pytest.mark.requires_vram(60)
def test_sixty_gb(): pass

def test_plain(): pass

@pytest.mark.requires_vram(500)
def test_huge(): pass
"""
POOL = """\
runners:
  - name: pro6000
    labels: [self-hosted, linux, gpu, rtx-pro-6000]
    gpus: 1*rtx-pro-6000-blackwell
    driver: ">=570"
  - name: h100x2
    labels: [self-hosted, linux, gpu, h100x2]
    gpus: 2*h100-sxm
    shards: 2
placement: every
"""
# Where each test runs under placement every (test_huge: no class can run it).
EVERY = {
    "pro6000": {"test_ninety_gb", "test_fp4", "test_sixty_gb", "test_plain"},
    "h100x2": {"test_two_gpus", "test_sixty_gb"},
}


def probe(cards: str, driver: str = "575.57.08") -> str:
    """A conftest whose real probe finds the catalog's ``cards`` with ``driver``."""
    return f"""
import dataclasses
from pytest_gpufit.hardware.catalog import simulated_gpus
from pytest_gpufit.hardware.records import Environment, Inventory

def pytest_gpufit_probe(config):
    gpus = tuple(dataclasses.replace(g, simulated=False) for g in simulated_gpus({cards!r}))
    return Inventory(gpus=gpus, environment=Environment(driver_version={driver!r}), source="fake")
"""
