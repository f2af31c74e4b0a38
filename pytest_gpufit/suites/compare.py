"""A suite check's measurements against the accepted baseline of its GPU model and suite."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_gpufit.baseline import (
    BaselinePolicy,
    Comparison,
    Fingerprint,
    compare,
    compare_golden,
    confirm,
    environment_changes,
    metric_values,
)
from pytest_gpufit.baseline.setup import judge_setup
from pytest_gpufit.errors import GpufitError


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
    policy: BaselinePolicy,
    default_tolerance: float,
    remeasure: Callable[[], Mapping[str, Any]] | None = None,
    suite: str = "",
    setup: Mapping[str, Any] | None = None,
) -> Outcome:
    """Compare one check; a worse metric or a golden mismatch fails, a better one warns.

    A metric beyond its tolerance is re-measured ``policy.confirm`` more times through
    ``remeasure`` and fails only if the median of all runs is still beyond it. A check that
    the accepted run lacks (or did not pass in) fails, or warns under ``missing: warn``.
    """
    outcome = Outcome()
    if accepted is None:
        outcome.failures.append(
            f"no accepted baseline for {now.gpu_name}{f' and suite {suite}' if suite else ''} "
            f"in {where}: run once with --gpufit-baseline=save, or accept a stored run "
            "(gpufit baseline accept RUN)"
        )
        return outcome
    run_id = accepted.get("id", "?")
    old = accepted["results"].get(nodeid)
    if old is None or old.get("outcome", "passed") != "passed":
        state = "is not in" if old is None else f"did not pass ({old.get('outcome')}) in"
        hint = "" if policy.missing == "warn" else ", or set baseline: {missing: warn} in the suite"
        message = (
            f"{nodeid} {state} baseline run {run_id}; save a new baseline that covers it "
            f"(--gpufit-baseline=save){hint}"
        )
        (outcome.warnings if policy.missing == "warn" else outcome.failures).append(message)
        return outcome
    if setup is not None:  # figures measured with other parameters are not compared
        failure, warning = judge_setup(old, setup, run_id, nodeid, policy.missing)
        outcome.warnings += [warning] if warning else []
        if failure:
            outcome.failures.append(failure)
            return outcome
    changes = environment_changes(accepted.get("fingerprint", {}), now.to_dict())
    prefix = ", ".join(changes) or "no environment change"
    old_metrics = old.get("metrics", {})
    where_old = f"baseline run {run_id}: {nodeid}"
    judged = compare(old_metrics, metrics, policy.tolerances, default_tolerance, where_old)
    # A metric the baseline holds but this run did not measure would otherwise go unjudged.
    lost = sorted(set(metric_values(old_metrics, where_old)) - set(metric_values(metrics)))
    if lost:
        hint = "" if policy.missing == "warn" else ", or set baseline: {missing: warn} in the suite"
        message = (
            f"{nodeid}: baseline run {run_id} holds {', '.join(lost)} but this run did not "
            f"measure {'it' if len(lost) == 1 else 'them'}; save a new baseline if the check "
            f"changed on purpose (--gpufit-baseline=save){hint}"
        )
        (outcome.warnings if policy.missing == "warn" else outcome.failures).append(message)
    judged = _confirmed(judged, policy.confirm, remeasure)
    for c in judged:
        outcome.comparisons.append(
            {
                "metric": c.metric,
                "old": c.old,
                "new": c.new,
                "change": round(c.change, 4),
                "tolerance": c.tolerance,
                "spread": round(c.spread, 4),
                "runs": len(c.runs),
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
        for warning in (c.noisy(), c.records_only()):
            if warning:
                outcome.warnings.append(warning)
    if "golden" in metrics:
        if "golden" not in old_metrics:
            outcome.failures.append(f"baseline run {run_id} holds no golden tokens for {nodeid}")
        else:
            try:
                problem = compare_golden(
                    old_metrics["golden"],
                    metrics["golden"],
                    float(metrics.get("golden_max_logprob_diff", 0.1)),
                )
            except GpufitError as error:
                problem = str(error)
            if problem:
                outcome.failures.append(
                    f"{prefix}: golden output differs from baseline {run_id}: {problem}"
                )
    return outcome


def _confirmed(
    judged: list[Comparison], times: int, remeasure: Callable[[], Mapping[str, Any]] | None
) -> list[Comparison]:
    """Re-measure when a metric is worse, and judge each worse one on the median of all runs."""
    if remeasure is None or times < 1 or not any(c.verdict == "worse" for c in judged):
        return judged
    again = [metric_values(remeasure()) for _ in range(times)]
    return [
        confirm(c, [run[c.metric] for run in again if c.metric in run])
        if c.verdict == "worse"
        else c
        for c in judged
    ]
