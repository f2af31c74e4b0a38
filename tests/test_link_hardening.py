"""requires_p2p on machines larger than the examples: every answer is the true one (a group
that exists is found; a search that gave up says so) and a reason never blames the probe for
pairs a simulation did not record. Each test failed before its fix."""

from __future__ import annotations

import pytest

from pytest_gpufit import requirements
from pytest_gpufit.hardware.catalog import simulated_gpus, simulated_links
from pytest_gpufit.hardware.records import GpuLink, Inventory
from pytest_gpufit.requirements import Requirement, evaluate


def _machine(n: int, bad: set[tuple[int, int]]) -> Inventory:
    """``n`` cards behind one switch, P2P on for every pair but ``bad``."""
    links = tuple(
        GpuLink(a, b, "single-switch", "chipset-not-supported" if (a, b) in bad else "ok", "ok")
        for a in range(n)
        for b in range(a + 1, n)
    )
    return Inventory(gpus=simulated_gpus(f"{n}*rtx-pro-6000"), links=links, source="nvml")


# Six cards (0, 3, 6, ...) each without P2P to their two neighbours: leaving out those six, 64
# of 70 reach each other. In index order the search first keeps them and loses their twelve
# neighbours, then had to backtrack through more groups than its budget.
STARS = {(3 * k, 3 * k + j) for k in range(6) for j in (1, 2)}


def test_a_group_that_exists_is_found() -> None:
    verdict = evaluate(Requirement(count=64, p2p=True), _machine(70, STARS))
    assert verdict.ok, verdict.reason
    assert len(verdict.devices) == 64
    assert not {3 * k for k in range(6)} & set(verdict.devices)


def test_no_group_is_said_plainly_when_none_exists() -> None:
    """Seven disjoint bad pairs leave at most 63 of 70 cards together."""
    verdict = evaluate(
        Requirement(count=64, p2p=True), _machine(70, {(2 * i, 2 * i + 1) for i in range(7)})
    )
    assert not verdict.ok
    assert "within the search" not in verdict.reason
    assert "GPU0-GPU1 P2P read not supported by the chipset" in verdict.reason


def test_a_search_that_gave_up_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requirements, "_SEARCH_STEPS", 3)
    verdict = evaluate(Requirement(count=64, p2p=True), _machine(70, STARS))
    assert not verdict.ok
    assert "none found among 70 GPUs within the search" in verdict.reason


def test_a_large_simulation_does_not_blame_the_probe() -> None:
    gpus = simulated_gpus("70*h100-sxm")
    assert simulated_links(gpus) == ()  # past 64 cards no pair is recorded
    inventory = Inventory(gpus=gpus, source="simulated")
    verdict = evaluate(Requirement(count=2, p2p=True), inventory)
    assert not verdict.ok
    assert "probe" not in verdict.reason
    assert "a simulated setup of more than 64 cards has no pair records" in verdict.reason
