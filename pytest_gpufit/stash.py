"""What gpufit keeps in pytest's stash, and how a hook finds the session kept there.

A leaf: at run time it imports pytest alone, so every layer that reads a key (the fleet's
planner, the suite items, the hooks) does so without importing the session or the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the stored types, for type checkers only: this module stays a leaf
    from pytest_gpufit.requirements import Requirement, Verdict
    from pytest_gpufit.session import GpufitSession

SESSION: pytest.StashKey[GpufitSession] = pytest.StashKey()
# An item's gpufit requirement as read at collection (None: the item has no gpufit mark).
REQUIREMENT: pytest.StashKey[Requirement | None] = pytest.StashKey()
VERDICT: pytest.StashKey[Verdict] = pytest.StashKey()
# Set while ``gpufit plan`` collects (fleet/collect.py): no probe, no expect, no runner
# selection; the plan judges every class by simulation.
PLANNING: pytest.StashKey[bool] = pytest.StashKey()

FIXTURES = frozenset({"gpu", "gpu_inventory", "gpu_environment"})
"""The fixtures that make a test a user of gpufit (and so worth a probe and a summary)."""


def state_of(config: pytest.Config) -> GpufitSession:
    """The gpufit session of a configured pytest session."""
    return config.stash[SESSION]
