"""Running one suite check: its kind's ``run`` (``pytest_gpufit.suites.kinds``), inside what the
target's backend adds to every check that asks it; a failed expectation raises ``CheckFailed``
with the measured figure in the message."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.metrics import non_finite
from pytest_gpufit.suites.context import CheckFailed, Context
from pytest_gpufit.suites.kinds import KINDS, Run

if TYPE_CHECKING:
    from pytest_gpufit.suites.records import Check

__all__ = ["RUNNERS", "CheckFailed", "Context", "non_finite", "run_check"]

# Each kind's run, as the registry gives it; a test may swap one for a session.
RUNNERS: dict[str, Run] = {name: kind.run for name, kind in KINDS.items()}


def run_check(ctx: Context, check: Check) -> dict[str, Any]:
    """Run one check; raise CheckFailed listing every unmet expectation."""
    run = RUNNERS[check.kind]
    try:
        if KINDS[check.kind].uses_backend:
            with ctx.bound().guard(ctx.metrics, ctx.failures):
                run(ctx, check.params)
        else:
            run(ctx, check.params)
    except GpufitError as error:
        raise CheckFailed(str(error)) from None
    bad = non_finite(ctx.metrics)
    if bad:  # NaN compares false both ways: it must never reach a threshold or a baseline
        ctx.failures.insert(
            0,
            f"measured {', '.join(bad)}: a measurement must be a finite number "
            "(the device, the backend or the model produced garbage)",
        )
    if ctx.failures:
        raise CheckFailed("; ".join(ctx.failures))
    return ctx.metrics
