"""conftest text for pytester sessions whose *real* probe finds given cards.

Simulation never gates (it cannot be combined with ``--gpufit-on-missing=fail``, and
``--gpufit-expect`` ignores it), so a test of gating on a given card fakes the probe instead:
the catalog's specs, reported as real hardware by the ``pytest_gpufit_probe`` hook.
"""

from __future__ import annotations

from pathlib import Path

TESTS = str(Path(__file__).parent)


def catalog_probe(cards: str) -> str:
    """A conftest whose probe finds ``cards`` (``"rtx-4090"``, ``"2*h100-sxm,t4"``)."""
    return f"""
import dataclasses
from pytest_gpufit.hardware.catalog import simulated_gpus
from pytest_gpufit.hardware.records import Inventory

def pytest_gpufit_probe(config):
    gpus = tuple(dataclasses.replace(g, simulated=False) for g in simulated_gpus({cards!r}))
    return Inventory(gpus=gpus, source="fake")
"""


def nvml_probe(cards: str, calls: str | None = None) -> str:
    """A conftest whose probe is NVML over ``fake_nvml`` cards (a Python list expression of
    ``FakeCard(...)``, optionally followed by ``, links={...}`` of ``LINK_SCENARIOS``); it
    honours ``CUDA_VISIBLE_DEVICES`` as NVML's real probe does.
    With ``calls``, each probe appends a line to that file."""
    record = f"    open({calls!r}, 'a').write('probe\\n')\n" if calls else ""
    return f"""
import sys
sys.path.insert(0, {TESTS!r})
from fake_nvml import FakeNvml, FakeCard, FakeLink, LINK_SCENARIOS, RTX_4090
from pytest_gpufit.hardware.nvml import probe_nvml

def pytest_gpufit_probe(config):
{record}    return probe_nvml(FakeNvml({cards}))
"""
