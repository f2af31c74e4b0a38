"""Declarative YAML suites: a model must load, generate, and reach its targets on the card.

This module stays tiny: the plugin asks it about every collected file.
"""

from __future__ import annotations

from pathlib import Path

SUITE_GLOBS = ("gpufit_*.yaml", "*.gpufit.yaml", "gpufit_*.yml", "*.gpufit.yml")


def is_suite_file(path: Path) -> bool:
    """``suites/*.yaml``, ``gpufit_*.yaml`` and ``*.gpufit.yaml`` are suites."""
    if path.suffix not in (".yaml", ".yml"):
        return False
    return path.parent.name == "suites" or any(path.match(g) for g in SUITE_GLOBS)
