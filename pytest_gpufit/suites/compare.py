"""A suite check's measurements against the accepted baseline of its GPU model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_gpufit.baseline import (
    Fingerprint,
    compare,
    compare_golden,
    environment_changes,
)


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)


def against_baseline(
    accepted: Mapping[str, Any] | None,
    where: str,
    nodeid: str,
    now: Fingerprint,
    metrics: Mapping[str, Any],
    tolerances: Mapping[str, float],
    default_tolerance: float,
) -> Outcome:
    """Compare one check; a worse metric or a golden mismatch fails, a better one warns."""
    outcome = Outcome()
    if accepted is None:
        outcome.failures.append(
            f"no accepted baseline for {now.gpu_name} in {where}: run once with "
            "--gpufit-baseline=save, or accept a stored run (gpufit baseline accept RUN)"
        )
        return outcome
    run_id = accepted.get("id", "?")
    old = accepted["results"].get(nodeid)
    if old is None:
        outcome.warnings.append(
            f"{nodeid} is not in baseline run {run_id}; save a new baseline to cover it"
        )
        return outcome
    changes = environment_changes(accepted.get("fingerprint", {}), now.to_dict())
    prefix = ", ".join(changes) or "no environment change"
    old_metrics = old.get("metrics", {})
    for c in compare(old_metrics, metrics, tolerances, default_tolerance):
        outcome.comparisons.append(
            {
                "metric": c.metric,
                "old": c.old,
                "new": c.new,
                "change": round(c.change, 4),
                "tolerance": c.tolerance,
                "verdict": c.verdict,
                "baseline_run": run_id,
            }
        )
        if c.verdict == "worse":
            outcome.failures.append(f"{prefix}: {c.text()}")
        elif c.verdict == "better":
            outcome.warnings.append(
                f"{prefix}: {c.text()}: better than baseline {run_id}; "
                "consider accepting this run as the new baseline"
            )
    if "golden" in metrics:
        if "golden" not in old_metrics:
            outcome.failures.append(f"baseline run {run_id} holds no golden tokens for {nodeid}")
        else:
            problem = compare_golden(
                old_metrics["golden"],
                metrics["golden"],
                float(metrics.get("golden_max_logprob_diff", 0.1)),
            )
            if problem:
                outcome.failures.append(
                    f"{prefix}: golden output differs from baseline {run_id}: {problem}"
                )
    return outcome
