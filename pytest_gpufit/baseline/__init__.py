"""Baselines keyed by GPU model and suite: store measured runs, compare after upgrades.

``store`` (the folder and its records), ``compare`` (metrics, tolerances, confirmation),
``fingerprint`` (what a run depends on), ``golden`` (greedy tokens), ``session`` (one pytest
session's reads and saves).
"""

from __future__ import annotations

from pytest_gpufit.baseline.compare import (
    METRIC_LABELS,
    METRICS,
    BaselinePolicy,
    Comparison,
    compare,
    confirm,
    judge,
    metric_values,
    parse_confirm,
    parse_missing,
    parse_tolerances,
)
from pytest_gpufit.baseline.fingerprint import (
    Fingerprint,
    environment_changes,
    fingerprint,
    git_commit,
)
from pytest_gpufit.baseline.golden import check_golden, compare_golden
from pytest_gpufit.baseline.session import BaselineSession, SavedRun
from pytest_gpufit.baseline.store import FORMAT, RunInfo, Store, failed_checks, slug
from pytest_gpufit.numbers import format_number

MODES = ("off", "compare", "save")

__all__ = [
    "FORMAT",
    "METRICS",
    "METRIC_LABELS",
    "MODES",
    "BaselinePolicy",
    "BaselineSession",
    "Comparison",
    "Fingerprint",
    "RunInfo",
    "SavedRun",
    "Store",
    "check_golden",
    "compare",
    "compare_golden",
    "confirm",
    "environment_changes",
    "failed_checks",
    "fingerprint",
    "format_number",
    "git_commit",
    "judge",
    "metric_values",
    "parse_confirm",
    "parse_missing",
    "parse_tolerances",
    "slug",
]
