"""The items of a pytest session, collected in this process for ``gpufit plan``.

pytest's own collection with the gpufit plugin active (markers, suite files, the same
requirements a gate judges), ``--collect-only``: nothing runs, no GPU is touched, no torch is
imported by gpufit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Sequence

import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fleet.plan import ItemFact
from pytest_gpufit.fleet.select import item_fact
from pytest_gpufit.markers import item_requirement, registered_names
from pytest_gpufit.stash import PLANNING, REQUIREMENT

__all__ = ["PLANNING", "collect", "item_fact"]


class _Collector:
    def __init__(self) -> None:
        self.facts: list[ItemFact] = []
        self.gpufit_active = False
        self.late: list[str] = []  # items whose gpufit marks changed after gpufit read them

    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[PLANNING] = True

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # Without the plugin (-p no:gpufit in addopts) no item has a requirement: every gate
        # would look ungated and land on the first class. Refuse instead of planning that.
        self.gpufit_active = session.config.pluginmanager.has_plugin("gpufit-session")
        self.facts = [item_fact(item) for item in session.items]
        if self.gpufit_active:
            self.late = late_marks(session.items)


def late_marks(items: Sequence[pytest.Item]) -> list[str]:
    """Items whose gpufit marks were added or changed after gpufit's collection hook (by a
    ``trylast`` ``pytest_collection_modifyitems``): a gate job selects before such a hook runs,
    so it would place them as they were, on a class that may not be able to run them."""
    late: list[str] = []
    if not items:
        return late
    registered = registered_names(items[0].config.getini("markers"))
    for item in items:
        try:
            now = item_requirement(item, registered)
        except GpufitError as error:
            late.append(f"{item.nodeid}: {error}")
            continue
        if now != item.stash.get(REQUIREMENT, None):
            late.append(item.nodeid)
    return late


def collect(args: Sequence[str]) -> list[ItemFact]:
    """Collect ``args`` (pytest arguments) in this process; a failed collection is an error
    that shows pytest's own output."""
    collector = _Collector()
    extra = ["--collect-only", "-q", "-p", "no:cacheprovider"]
    # gpufit is imported already (this command is gpufit): nothing to rewrite, nothing to say.
    extra += ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    if importlib.util.find_spec("xdist") is not None:
        extra += ["-n", "0"]  # an addopts -n would collect in workers, out of sight
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = pytest.main([*args, *extra], plugins=[collector])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        shown = out.getvalue().strip()[-4000:]
        raise GpufitError(
            f"collecting {' '.join(args) or '.'} failed (pytest exit {int(code)}):\n{shown}"
        )
    if not collector.gpufit_active:
        raise GpufitError(
            f"collecting {' '.join(args) or '.'}: the gpufit plugin is not active in this "
            "session (-p no:gpufit in the arguments or the ini addopts?); the plan needs it "
            "to read the tests' requirements"
        )
    if collector.late:
        shown = "\n  ".join(collector.late[:20])
        more = f"\n  ... and {len(collector.late) - 20} more" if len(collector.late) > 20 else ""
        raise GpufitError(
            f"collecting {' '.join(args) or '.'}: {len(collector.late)} item(s) got gpufit "
            "marks after gpufit read them (a trylast pytest_collection_modifyitems hook?); a "
            "gate job places items before such a hook runs, so it would run them on a class "
            "that may lack what they need. Add these marks in the test, a conftest "
            f"pytestmark, or a hook that is not trylast:\n  {shown}{more}"
        )
    return collector.facts
