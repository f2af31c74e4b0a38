"""Skips: their reasons, the ``--gpufit-forbid-skips`` policy, and the summary that names each
reason once. Pure functions over what pytest's reports carry."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from pytest_gpufit.numbers import plural

SHOWN_REASONS = 10  # skip reasons in the terminal summary before "and N more"


def skip_reason(longrepr: object) -> str:
    """The reason of a skip report: pytest gives ``(path, line, 'Skipped: reason')``.

    >>> skip_reason(("t.py", 3, "Skipped: could not import 'vllm'"))
    "could not import 'vllm'"
    """
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")


def allowed(reason: str, patterns: Iterable[str]) -> bool:
    """Whether a skip reason is one the user accepts: any pattern matches part of it.

    >>> allowed("could not import 'vllm': No module named 'vllm'", [r"import 'vllm'"])
    True
    >>> allowed("needs 60 GB of GPU memory", [r"import 'vllm'"])
    False
    """
    return any(re.search(pattern, reason) for pattern in patterns)


# Reasons that share no word: a pattern that matches each of them (or the empty text) matches
# any reason, so it would turn --gpufit-forbid-skips off without saying so.
UNRELATED_REASONS = ("a", "Z", "7", "-", " ")


def matches_any_reason(pattern: str) -> bool:
    """Whether an allow-list pattern would accept every skip (``.*``, ``vllm|``, ``^``, ``.``).

    >>> matches_any_reason(".*"), matches_any_reason("vllm|"), matches_any_reason("(?s).")
    (True, True, True)
    >>> matches_any_reason("import 'vllm'"), matches_any_reason("^$")
    (False, True)
    """
    return re.search(pattern, "") is not None or all(
        re.search(pattern, reason) for reason in UNRELATED_REASONS
    )


def stopped_early(wasxfail: str, raised_xfail: bool) -> str | None:
    """The skip an xfail stands for, or None for an xfail whose test ran: ``pytest.xfail()``
    in a test or fixture stops it where a skip would, and ``xfail(run=False)`` never runs it
    (pytest's reason starts ``[NOTRUN]``). An xfail mark whose test ran and failed is no skip.

    >>> stopped_early("[NOTRUN] needs vllm", True)
    'xfail, not run: needs vllm'
    >>> stopped_early("no vllm here", True), stopped_early("known bug", False)
    ('pytest.xfail: no vllm here', None)
    """
    if not raised_xfail:
        return None
    if wasxfail.startswith("[NOTRUN] "):
        return "xfail, not run: " + wasxfail.removeprefix("[NOTRUN] ")
    return "pytest.xfail: " + wasxfail


def forbidden_text(reason: str, where: str) -> str:
    """The failure a forbidden skip becomes: the reason, where the rule came from, the way out.

    >>> print(forbidden_text("no GPU", "--gpufit-forbid-skips"))
    gpufit: skipped (no GPU), and skips fail this run (--gpufit-forbid-skips); make what it \
needs available, or accept the reason with --gpufit-allow-skip=REGEX
    """
    return (
        f"gpufit: skipped ({reason or 'no reason given'}), and skips fail this run ({where}); "
        "make what it needs available, or accept the reason with --gpufit-allow-skip=REGEX"
    )


def early_exit_text(message: str, where: str) -> str:
    """The failure of a session that ``pytest.exit(..., returncode=0)`` ended before its end.

    >>> print(early_exit_text("no GPU", "--gpufit-forbid-skips"))
    gpufit: pytest.exit() ended the run early with exit code 0 (no GPU): the tests after it \
did not run, and skips fail this run (--gpufit-forbid-skips); make what it needs available, or \
let pytest.exit give a non-zero code
    """
    why = message or "no reason given"
    return (
        f"gpufit: pytest.exit() ended the run early with exit code 0 ({why}): the tests after "
        f"it did not run, and skips fail this run ({where}); make what it needs available, or "
        "let pytest.exit give a non-zero code"
    )


def skip_lines(
    skipped: Mapping[str, str], explained: Mapping[str, Sequence[str]] | None = None
) -> list[str]:
    """The terminal summary of skips, one line per reason, most frequent first.

    ``skipped`` maps node ids to reasons; a skip whose reason is one of ``explained[nodeid]``
    (the verdict lines above already said it) is left out.

    >>> for line in skip_lines({"a": "no vllm", "b": "no vllm", "c": "slow"}):
    ...     print(line)
    gpufit: 3 tests skipped:
      2 tests: no vllm
      1 test: slow
    >>> skip_lines({"a": "needs 60 GB", "b": "slow"}, {"a": ["needs 60 GB"]})
    ['gpufit: 1 more test skipped:', '  1 test: slow']
    """
    explained = explained or {}
    reasons = Counter(
        reason for nodeid, reason in skipped.items() if reason not in explained.get(nodeid, ())
    )
    if not reasons:
        return []
    total = sum(reasons.values())
    noun = "more test" if total < len(skipped) else "test"  # the rest were explained above
    lines = [f"gpufit: {plural(total, noun)} skipped:"]
    for reason, count in reasons.most_common(SHOWN_REASONS):
        lines.append(f"  {plural(count, 'test')}: {reason or 'no reason given'}")
    if len(reasons) > SHOWN_REASONS:
        hidden = len(reasons) - SHOWN_REASONS
        lines.append(f"  and {plural(hidden, 'more reason')} (pytest -rs lists every skip)")
    return lines
