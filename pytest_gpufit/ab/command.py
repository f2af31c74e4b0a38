"""``gpufit ab``: its options, and the run from parsed options to outputs and exit code.

The contract with ``gpufit bisect`` (which runs this command per step) is the command line,
the exit code (0 nothing regressed or inconclusive; 1 regressed or inconclusive; 2 bad input)
and the ``--json`` document (schema ``gpufit-ab/1``; keys may be added, never renamed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_gpufit.ab import stats
from pytest_gpufit.ab.output import markdown, table_lines
from pytest_gpufit.ab.run import run_ab, subprocess_runner, temporary_workdir
from pytest_gpufit.ab.sides import check_pair, make_side
from pytest_gpufit.atomic import why_unwritable, write_text_atomic
from pytest_gpufit.errors import GpufitError

ROUNDS = 20


def add_parser(
    sub: Any, percent: Callable[[str], float], positive: Callable[[str], int]
) -> argparse.ArgumentParser:
    ab = sub.add_parser(
        "ab",
        help="A/B two environments on this card: the suite under A and B interleaved, each "
        "metric judged with a 95%% interval; exit 0 same/improved, 1 regressed or inconclusive",
        description="Run the selected tests under environment A and environment B, "
        "interleaved (A B, B A, ...), and judge each metric B against A, each round a pair: the "
        "Hodges-Lehmann ratio with its Wilcoxon signed-rank 95% interval, against the "
        "tolerance in the metric's "
        "direction (docs/ab.md). pytest options go after --: gpufit ab --a python=old/bin/python "
        "--b python=new/bin/python -- suites/x.yaml -k throughput",
    )
    ab.add_argument("pytest_args", nargs="*", help="what pytest runs, e.g. suites/x.yaml")
    ab.add_argument(
        "--a",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="side A: python=PATH (the interpreter the tests run under, and {python} of "
        "launch commands; default: this one), any other KEY fills {KEY} in launch commands",
    )
    ab.add_argument("--b", action="append", default=[], metavar="KEY=VALUE", help="side B, as --a")
    ab.add_argument(
        "--rounds",
        type=positive,
        default=ROUNDS,
        help=f"at most this many rounds (one run of each side per round; default {ROUNDS}); "
        "the run stops at a planned look once every metric has a verdict",
    )
    ab.add_argument(
        "--tolerance",
        type=percent,
        default=stats.TOLERANCE,
        help="a change within this is 'same' (default 5%%)",
    )
    ab.add_argument("--json", metavar="PATH", help="write the result (schema gpufit-ab/1)")
    ab.add_argument(
        "--markdown",
        metavar="PATH",
        help="write the Markdown summary here (it is appended to $GITHUB_STEP_SUMMARY too)",
    )
    ab.add_argument("--plot", metavar="PATH", help="a PNG of each metric's samples (matplotlib)")
    ab.add_argument(
        "--inconclusive",
        choices=("fail", "ok"),
        default="fail",
        help="ok: an inconclusive metric does not fail the run (exit 0); default fail",
    )
    ab.add_argument(
        "--gpu",
        type=int,
        metavar="INDEX",
        help="pin both sides to this GPU (CUDA_VISIBLE_DEVICES) and read its state per round; "
        "default: both inherit this shell's devices, GPU 0's state is read",
    )
    ab.add_argument(
        "--record",
        action="store_true",
        help="record the pair with both fingerprints in the baseline store (gpufit baseline "
        "list and diff then say 'B was A/B-tested against A')",
    )
    ab.add_argument("--dir", help="the baseline folder for --record (as gpufit baseline --dir)")
    ab.add_argument(
        "--timeout", type=positive, default=3600, help="seconds one run may take (default 3600)"
    )
    ab.set_defaults(handler=None)  # cli.py sets its thin handler
    return ab  # type: ignore[no-any-return]


def _card_state(gpu: int | None) -> Callable[[], dict[str, Any]]:
    from pytest_gpufit.hardware.nvml import card_state  # late: pynvml, on first use

    return lambda: card_state(gpu or 0)


def check_tolerance(tolerance: float, option: str = "--tolerance") -> None:
    """A tolerance of 0 or of 100% and more leaves no verdict to find: an interval never lies
    inside a band of zero width, and B/A never falls below 0 (no slowdown could regress).

    >>> check_tolerance(1.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: --tolerance 100%: B/A cannot fall below 0, ...
    """
    if tolerance <= 0:
        raise GpufitError(
            f"{option} {tolerance:.0%}: no interval lies inside a band of zero width, so no "
            "metric could ever be 'same'; give the change you accept, e.g. --tolerance 5%"
        )
    if tolerance >= 1:
        raise GpufitError(
            f"{option} {tolerance:.0%}: B/A cannot fall below 0, so with this tolerance no "
            "slowdown could ever be 'regressed'; give a tolerance under 100%, e.g. --tolerance 5%"
        )


def check_writable(path: str, option: str) -> None:
    """An output path is tried before the rounds, not found unwritable after an hour of them."""
    target = Path(path).absolute()
    probe = target.with_name(f".{target.name}.{os.getpid()}.probe")
    try:
        if target.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("", "utf-8")
        probe.unlink()
    except OSError as error:
        raise GpufitError(
            f"{option} {path}: cannot write there ({why_unwritable(target, error)}); give a "
            "path in a writable folder"
        ) from None


def run_command(
    args: argparse.Namespace,
    plot: Callable[[dict[str, Any], Path], Path | None],
    store: Callable[[argparse.Namespace], Any] | None,
) -> int:
    pytest_args = [a for a in args.pytest_args if a != "--"]
    if not pytest_args:
        raise GpufitError(
            "gpufit ab: name what to run, e.g. gpufit ab --a python=old/bin/python "
            "--b python=new/bin/python -- suites/x.yaml"
        )
    if not args.a and not args.b:
        raise GpufitError("gpufit ab: give the two sides with --a KEY=VALUE and --b KEY=VALUE")
    check_tolerance(args.tolerance)
    for option in ("json", "markdown", "plot"):
        if getattr(args, option):
            check_writable(getattr(args, option), f"--{option}")
    a = make_side("A", args.a, "--a")
    b = make_side("B", args.b, "--b")
    check_pair(a, b)

    def progress(line: str) -> None:
        print(f"gpufit ab: {line}", file=sys.stderr, flush=True)

    with temporary_workdir() as workdir:
        outcome = run_ab(
            a,
            b,
            pytest_args,
            subprocess_runner(Path(workdir), args.gpu, float(args.timeout)),
            rounds=args.rounds,
            tolerance=args.tolerance,
            card_state=_card_state(args.gpu),
            progress=progress,
            inconclusive_ok=args.inconclusive == "ok",
        )
    data = outcome.to_dict()
    print("\n".join(table_lines(outcome)))
    text = markdown(outcome)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    for path in filter(None, (args.markdown,)):
        write_text_atomic(Path(path), text)
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(text)
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(data, indent=2) + "\n")
    if args.plot:
        written = plot(data, Path(args.plot).absolute())
        print(f"plot: {written}" if written else "plot: not drawn (matplotlib not installed)")
    if store is not None:
        found = store(args)
        path = found.write_ab(data)
        print(f"recorded the A/B pair in {path}")
    return outcome.exit_code
