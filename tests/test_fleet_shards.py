"""Sharding a class with pytest-split: the shards of a class partition exactly the items the
plan gives it (none lost, none twice), with and without a durations file, orphans included."""

from __future__ import annotations

import json

import pytest
from fleet_project import POOL, probe

TESTS = """
import pytest

@pytest.mark.requires_gpu(count=2)
@pytest.mark.parametrize("n", range(7))
def test_two_gpus(n): pass

@pytest.mark.requires_vram(60)
@pytest.mark.parametrize("n", range(5))
def test_sixty_gb(n): pass

@pytest.mark.requires_vram(90)
@pytest.mark.parametrize("n", range(4))
def test_ninety_gb(n): pass

@pytest.mark.parametrize("n", range(3))
def test_plain(n): pass

@pytest.mark.requires_vram(500)
def test_huge(): pass
"""
CARDS = {"pro6000": "rtx-pro-6000-blackwell", "h100x2": "2*h100-sxm"}


def collected(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", *args)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    return [line for line in result.outlines if line.startswith("test_fleet.py::")]


@pytest.mark.parametrize(("runner", "expected"), [("h100x2", 7 + 5), ("pro6000", 5 + 4 + 3 + 1)])
def test_a_class_collects_the_items_the_plan_gives_it(
    pytester: pytest.Pytester, runner: str, expected: int
) -> None:
    """h100x2: two GPUs, sixty GB; pro6000: sixty GB, ninety GB, ungated, the orphan."""
    pytester.makepyfile(test_fleet=TESTS)
    pytester.makefile(".yaml", **{"gpufit-runners": POOL})
    pytester.makeconftest(probe(CARDS[runner]))
    whole = collected(pytester, f"--gpufit-runner={runner}", "--gpufit-runners=gpufit-runners.yaml")
    assert len(whole) == expected


@pytest.mark.parametrize("durations", [False, True], ids=["no-durations", "durations"])
@pytest.mark.parametrize(("runner", "shards"), [("h100x2", 3), ("pro6000", 4), ("h100x2", 12)])
def test_the_shards_of_a_class_partition_its_items(
    pytester: pytest.Pytester, runner: str, shards: int, durations: bool
) -> None:
    pytest.importorskip("pytest_split", reason="pytest-split (the dev and fleet extras) shards")
    pytester.makepyfile(test_fleet=TESTS)
    pytester.makefile(".yaml", **{"gpufit-runners": POOL})
    pytester.makeconftest(probe(CARDS[runner]))
    common = [f"--gpufit-runner={runner}", "--gpufit-runners=gpufit-runners.yaml"]
    whole = collected(pytester, *common)
    if durations:
        # Durations of some of this class's items, of items of the other class, of gone ones.
        times = {nodeid: 1.0 + i for i, nodeid in enumerate(whole[::2])}
        times["test_fleet.py::test_ninety_gb[0]"] = 30.0
        times["test_fleet.py::test_gone"] = 99.0
        pytester.path.joinpath("durations.json").write_text(json.dumps(times))
        common.append("--durations-path=durations.json")
    # As the workflow runs a shard (least_duration never leaves a shard empty while a class
    # has at least as many items as shards, and the plan never gives it more shards).
    split = [f"--splits={shards}", "--splitting-algorithm=least_duration"]
    parts = [
        collected(pytester, *common, *split, f"--group={group}") for group in range(1, shards + 1)
    ]
    assert all(parts), [len(p) for p in parts]
    every = [nodeid for part in parts for nodeid in part]
    assert sorted(every) == sorted(whole)  # none lost, none twice
    assert len(set(every)) == len(every)
    expected = {
        "h100x2": 7 + 5,  # two GPUs, sixty GB
        "pro6000": 5 + 4 + 3 + 1,  # sixty GB, ninety GB, ungated, the orphan
    }[runner]
    assert len(whole) == expected
