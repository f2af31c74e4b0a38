"""``gpufit ab``'s runs: the suite under side A and side B, interleaved, judged per metric.

The unit of alternation is one pytest session of a side (a subprocess under the side's
interpreter, writing gpufit's JSON report). Round r runs A then B when r is odd, B then A when
it is even (A B B A A B ...), so a drift of the machine (a warming card, a neighbour's job)
falls on both sides alike. A served target (``launch:``) is started once per session, warmed
up, measured ``repeats`` times and stopped: that session is its block, and the block's figure
(the check's median) is one sample; a server start costs seconds to minutes, so blocks, not
single requests, alternate. Each sample of a side is one session's figure of each metric;
A's and B's figures of one round are a pair, judged by ``stats.paired_interval``.

The run looks at its samples after the rounds of ``stats.looks(rounds)`` and stops at the
first look where every metric has a verdict (docs/ab.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gpufit import metrics
from pytest_gpufit.ab import stats
from pytest_gpufit.ab.child import run_child
from pytest_gpufit.ab.sides import Side, unused_keys
from pytest_gpufit.baseline.compare import metric_values
from pytest_gpufit.errors import GpufitError, Interrupted

SCHEMA = "gpufit-ab/1"
RUN_TIMEOUT_S = 3600.0
# What a side's run must not inherit: it would append each run to the CI job page, write the
# user's report or summary, save baselines, or start an A/B inside the A/B.
_DROPPED = (
    "GITHUB_STEP_SUMMARY",
    "GPUFIT_REPORT",
    "GPUFIT_SUMMARY",
    "GPUFIT_BASELINE",
    "GPUFIT_AB",
    "GPUFIT_AB_ENVS",
    "GPUFIT_AB_ROUNDS",
    "PYTEST_ADDOPTS",
)


@dataclass(frozen=True)
class Run:
    """One pytest session of one side."""

    side: str  # "A" | "B"
    round: int
    seconds: float
    exit_code: int
    values: Mapping[str, Mapping[str, float]]  # node id -> metric -> figure
    texts: Mapping[str, str] = field(default_factory=dict)  # node id -> generated text
    launches: tuple[tuple[str, ...], ...] = ()  # launch commands as the suite wrote them
    inventory: Mapping[str, Any] = field(default_factory=dict)
    card: Mapping[str, Any] | None = None  # the card's state just before the run
    goldens: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # node id -> golden
    outcomes: Mapping[str, str] = field(default_factory=dict)  # node id -> passed, failed, ...


Execute = Callable[[Side, int, Sequence[str]], Run]


def _launches(setup: Any) -> list[tuple[str, ...]]:
    """Every ``launch.command`` in a check's stored setup."""
    found: list[tuple[str, ...]] = []
    if isinstance(setup, Mapping):
        for key, value in setup.items():
            if key == "launch" and isinstance(value, Mapping) and "command" in value:
                found.append(tuple(str(x) for x in value["command"]))
            else:
                found += _launches(value)
    return found


Report = tuple[
    dict[str, dict[str, float]],
    dict[str, str],
    list[tuple[str, ...]],
    dict[str, Any],
    dict[str, Mapping[str, Any]],
]


def read_report(data: Mapping[str, Any], where: str) -> Report:
    """(values, texts, launch commands, inventory, golden records) of one gpufit JSON report."""
    values: dict[str, dict[str, float]] = {}
    texts: dict[str, str] = {}
    launches: list[tuple[str, ...]] = []
    goldens: dict[str, Mapping[str, Any]] = {}
    for nodeid, entry in (data.get("measurements") or {}).items():
        measured = entry.get("metrics") or {}
        found = metric_values(measured, f"{where}: {nodeid}")
        if found and entry.get("outcome") != "skipped":
            values[nodeid] = found
        if isinstance(measured.get("text"), str):
            texts[nodeid] = measured["text"]
        if isinstance(measured.get("golden"), Mapping):
            goldens[nodeid] = measured["golden"]
        launches += _launches(entry.get("setup"))
    return values, texts, sorted(set(launches)), dict(data.get("inventory") or {}), goldens


def read_outcomes(data: Mapping[str, Any]) -> dict[str, str]:
    """node id -> outcome (passed, failed, error, skipped, ...) of one gpufit JSON report.

    >>> read_outcomes({"results": {"t.py::a": {"outcome": "skipped", "reason": "no GPU"}}})
    {'t.py::a': 'skipped'}
    """
    results = data.get("results") or {}
    return {str(k): str(v.get("outcome")) for k, v in results.items() if isinstance(v, Mapping)}


def outcome_differences(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Each test whose outcomes differ between the sides over the runs (passed on A, failed
    or skipped on B, or not run at all): a metric cannot say "same" for a test that B fails,
    nor for one it skips (its checks did not run), so such a test fails the A/B. ``worse``
    is true where B has an outcome other than passed that A never had.

    >>> a = Run("A", 1, 1.0, 0, {}, outcomes={"t::x": "passed", "t::y": "passed"})
    >>> b = Run("B", 1, 1.0, 1, {}, outcomes={"t::x": "failed", "t::y": "passed"})
    >>> outcome_differences([a, b])
    [{'test': 't::x', 'a': {'passed': 1}, 'b': {'failed': 1}, 'worse': True}]
    """
    counts: dict[str, dict[str, dict[str, int]]] = {}
    sides = {run.side for run in runs}
    for run in runs:
        for nodeid, outcome in run.outcomes.items():
            side = counts.setdefault(nodeid, {"A": {}, "B": {}})[run.side]
            side[outcome] = side.get(outcome, 0) + 1
    out: list[dict[str, Any]] = []
    if sides != {"A", "B"}:
        return out
    for nodeid, by_side in sorted(counts.items()):
        a, b = by_side["A"], by_side["B"]
        if set(a) == set(b):
            continue
        worse = any(o != "passed" for o in set(b) - set(a)) or not b
        out.append({"test": nodeid, "a": a, "b": b, "worse": worse})
    return out


def subprocess_runner(
    workdir: Path, gpu: int | None = None, timeout_s: float = RUN_TIMEOUT_S
) -> Execute:
    """Run one session of a side: ``python -m pytest ARGS`` under the side's interpreter, in
    the current folder, with gpufit's JSON report written into ``workdir``."""

    def execute(side: Side, round_no: int, pytest_args: Sequence[str]) -> Run:
        report = workdir / f"{side.label}-{round_no:03d}.json"
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
        env["GPUFIT_AB_VARS"] = json.dumps(side.substitutions)
        if gpu is not None:  # both sides on the same judged card
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        command = [
            side.python,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            *pytest_args,
            # last: they win over the same options among the user's arguments
            "--gpufit-baseline=off",
            f"--gpufit-report={report}",
        ]
        began = time.monotonic()
        try:
            done = run_child(command, env=env, timeout_s=timeout_s)  # stopped, group and all
        except subprocess.TimeoutExpired:
            raise GpufitError(
                f"side {side.label} round {round_no}: pytest ran longer than {timeout_s:.0f} s "
                f"({' '.join(command)})"
            ) from None
        seconds = time.monotonic() - began
        # 0 passed, 1 some test failed (a slower B may fail its thresholds: still measured).
        if done.returncode not in (0, 1) or not report.is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise GpufitError(
                f"side {side.label} round {round_no}: pytest exited {done.returncode} "
                f"({' '.join(command)}); its output ends:\n{tail}"
            )
        data = json.loads(report.read_text("utf-8"))
        values, texts, launches, inventory, goldens = read_report(data, str(report))
        return Run(
            side.label,
            round_no,
            seconds,
            done.returncode,
            values,
            texts,
            tuple(launches),
            inventory,
            goldens=goldens,
            outcomes=read_outcomes(data),
        )

    return execute


@dataclass(frozen=True)
class MetricResult:
    test: str
    metric: str
    a: tuple[float, ...]
    b: tuple[float, ...]
    interval: stats.Interval
    tolerance: float
    verdict: str

    @property
    def higher_is_better(self) -> bool:
        found = metrics.find(self.metric)
        return True if found is None else found.higher_is_better

    def to_dict(self) -> dict[str, Any]:
        found = metrics.find(self.metric)
        iv = self.interval
        return {
            "test": self.test,
            "metric": self.metric,
            "unit": found.unit if found else "",
            "higher_is_better": self.higher_is_better,
            "a": list(self.a),
            "b": list(self.b),
            "ratio": iv.ratio,
            "low": iv.low if iv.exists else None,
            "high": iv.high if iv.exists else None,
            "confidence": iv.confidence,
            "scale": iv.scale,
            "paired": iv.paired,
            "tolerance": self.tolerance,
            "verdict": self.verdict,
        }


def judge(runs: Sequence[Run], tolerance: float, alpha: float) -> list[MetricResult]:
    """Every (test, metric) measured on both sides, judged at ``alpha`` from the rounds in
    which both sides measured it: A's and B's figure of one round are a pair (the paired
    interval cancels what moved both, a drift of the machine)."""
    by_round: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for run in runs:
        for nodeid, values in run.values.items():
            for metric, value in values.items():
                rounds = by_round.setdefault((nodeid, metric), {})
                rounds.setdefault(run.round, {})[run.side] = value
    lost = {(x.test, x.metric) for x in lost_metrics(runs)}
    out = []
    for (nodeid, metric), rounds in sorted(by_round.items()):
        pairs = [(v["A"], v["B"]) for _, v in sorted(rounds.items()) if len(v) == 2]
        if not pairs:
            continue
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        found = metrics.find(metric)
        floor = found.floor if found else 0.0
        iv = stats.paired_interval(a, b, alpha, floor)
        higher = True if found is None else found.higher_is_better
        word = stats.verdict(iv, higher, tolerance)
        if (nodeid, metric) in lost and word != "regressed":
            word = "inconclusive"  # judged on the rounds before it was lost: never "same"
        out.append(MetricResult(nodeid, metric, tuple(a), tuple(b), iv, tolerance, word))
    return out


@dataclass(frozen=True)
class Lost:
    """A metric one side measured in earlier rounds and no longer measures (the engine
    stopped reporting it, the test disappeared or was skipped): its later rounds have no
    pair, and judging it on the rounds before would hide that B lost something."""

    test: str
    metric: str
    side: str  # "A" | "B": the side without it
    first: int  # the first round the side measured it (never: the other side's first)
    last: int  # the last round before it went missing (never: as first)
    missing_from: int  # the first round of the side without it
    never: bool = False  # the side never measured it: the other side began to, after round 1

    def describe(self) -> str:
        """One line of the table and the Markdown.

        >>> Lost("t.py::x", "decode_tok_s", "B", 1, 3, 4).describe()
        'metric lost: t.py::x decode_tok_s: present in rounds 1-3, missing on side B from round 4'
        >>> Lost("t.py::y", "decode_tok_s", "B", 2, 2, 2, never=True).describe()
        'metric lost: t.py::y decode_tok_s: measured on side A from round 2, never on side B'
        """
        if self.never:
            other = "A" if self.side == "B" else "B"
            return (
                f"metric lost: {self.test} {self.metric}: measured on side {other} from round "
                f"{self.first}, never on side {self.side}"
            )
        seen = f"rounds {self.first}-{self.last}"
        if self.first == self.last:
            seen = f"round {self.first}"
        return (
            f"metric lost: {self.test} {self.metric}: present in {seen}, missing on side "
            f"{self.side} from round {self.missing_from}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "metric": self.metric,
            "side": self.side,
            "present_from": self.first,
            "present_to": self.last,
            "missing_from": self.missing_from,
            "never": self.never,
        }


def lost_metrics(runs: Sequence[Run]) -> list[Lost]:
    """Each (test, metric, side) a side measured in a round and then lacked in a later round
    of its own; the first such round is named. And each one side began to measure after round
    1 (round 1 refuses a one-sided metric) that the other side never measured in a round both
    ran: it has no pair, and judging the rest would pass over it.

    >>> a1 = Run("A", 1, 1.0, 0, {"t::x": {"decode_tok_s": 9.0}})
    >>> b1 = Run("B", 1, 1.0, 0, {"t::x": {"decode_tok_s": 9.0}})
    >>> a2 = Run("A", 2, 1.0, 0, {"t::x": {"decode_tok_s": 9.0}})
    >>> b2 = Run("B", 2, 1.0, 0, {"t::x": {}})
    >>> [x.describe() for x in lost_metrics([a1, b1, b2, a2])]
    ['metric lost: t::x decode_tok_s: present in round 1, missing on side B from round 2']
    """
    seen: dict[tuple[str, str, str], tuple[int, int]] = {}  # -> (first, last) round measured
    lost: dict[tuple[str, str, str], Lost] = {}
    for run in sorted(runs, key=lambda r: (r.round, r.side)):
        has = {(test, metric) for test, values in run.values.items() for metric in values}
        for (test, metric, side), (first, last) in seen.items():
            key = (test, metric, side)
            if side == run.side and (test, metric) not in has and key not in lost:
                lost[key] = Lost(test, metric, side, first, last, run.round)
        for test, metric in has:
            key = (test, metric, run.side)
            seen[key] = (seen.get(key, (run.round, 0))[0], run.round)
    for (test, metric, side), (first, _) in seen.items():
        other = "B" if side == "A" else "A"
        key = (test, metric, other)
        if key in seen or key in lost:
            continue
        both = [r.round for r in runs if r.side == other and r.round >= first]
        if both:  # the other side ran a round since, and never measured it
            lost[key] = Lost(test, metric, other, first, first, min(both), never=True)
    return sorted(lost.values(), key=lambda x: (x.test, x.metric, x.side))


def one_sided(first: Run, second: Run) -> list[str]:
    """``test: metric (A only)`` for each figure one side's run measured and the other's did
    not: those cannot be compared, and the A/B stops."""
    out = []
    for x, y in ((first, second), (second, first)):
        for nodeid, values in sorted(x.values.items()):
            missing = sorted(set(values) - set(y.values.get(nodeid, {})))
            out += [f"{nodeid}: {m} ({x.side} only)" for m in missing]
    return out


def text_agreement(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per test that reports generated text: how many (A, B) pairs of runs produced the same
    text, and how often each side agreed with itself."""

    def pairs(xs: Sequence[str], ys: Sequence[str]) -> tuple[int, int]:
        return sum(x == y for x in xs for y in ys), len(xs) * len(ys)

    texts: dict[str, dict[str, list[str]]] = {}
    for run in runs:
        for nodeid, text in run.texts.items():
            texts.setdefault(nodeid, {"A": [], "B": []})[run.side].append(text)
    out = []
    for nodeid, sides in sorted(texts.items()):
        a, b = sides["A"], sides["B"]
        if not a or not b:
            continue
        same, total = pairs(a, b)
        out.append(
            {
                "test": nodeid,
                "equal_pairs": same,
                "pairs": total,
                "rate": same / total,
                "a_distinct": len(set(a)),
                "b_distinct": len(set(b)),
            }
        )
    return out


def _top(record: Mapping[str, Any], step: int) -> dict[Any, float]:
    return dict(zip(record["top_ids"][step], record["top_logprobs"][step], strict=True))


def _kl_top(p: Mapping[Any, float], q: Mapping[Any, float]) -> float | None:
    """KL(p || q) over the tokens both top-k lists hold, each renormalized over them; None
    where they share fewer than two (no distribution to compare)."""
    shared = sorted(set(p) & set(q), key=str)
    if len(shared) < 2:
        return None
    zp = sum(math.exp(p[t]) for t in shared)
    zq = sum(math.exp(q[t]) for t in shared)
    return sum(
        (math.exp(p[t]) / zp) * (p[t] - math.log(zp) - (q[t] - math.log(zq))) for t in shared
    )


def golden_agreement(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per test whose reports carry greedy top-k log-probabilities (``reference: golden``
    precision checks): A's first run against each run of B, step by step up to the first
    divergence: the share of steps whose greedy (top-1) token agrees, the largest
    |log-probability| change of the chosen token, and the mean KL over the shared top-k."""
    firsts: dict[str, Mapping[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r.round):
        if run.side == "A":
            for nodeid, golden in run.goldens.items():
                firsts.setdefault(nodeid, golden)
    out = []
    for nodeid, ref in sorted(firsts.items()):
        agree = steps = 0
        diffs: list[float] = []
        kls: list[float] = []
        for run in runs:
            other = run.goldens.get(nodeid) if run.side == "B" else None
            if other is None:
                continue
            for step, (x, y) in enumerate(zip(ref["tokens"], other["tokens"], strict=False)):
                steps += 1
                p, q = _top(ref, step), _top(other, step)
                kl = _kl_top(p, q)
                if kl is not None:
                    kls.append(kl)
                if x != y:
                    break  # after a divergence the sequences are no longer comparable
                agree += 1
                diffs.append(abs(p[x] - q[y]))
        if steps:
            out.append(
                {
                    "test": nodeid,
                    "top1_agreement": agree / steps,
                    "steps": steps,
                    "max_logprob_diff": max(diffs) if diffs else None,
                    "kl_topk_mean": sum(kls) / len(kls) if kls else None,
                }
            )
    return out


@dataclass(frozen=True)
class Outcome:
    a: Side
    b: Side
    rounds: int  # rounds run
    max_rounds: int
    looks: tuple[int, ...]
    alpha: float
    results: tuple[MetricResult, ...]
    runs: tuple[Run, ...]
    texts: tuple[Mapping[str, Any], ...]
    logprobs: tuple[Mapping[str, Any], ...]
    fingerprints: Mapping[str, Mapping[str, Any]]
    seconds: float
    inconclusive_ok: bool = False
    outcomes: tuple[Mapping[str, Any], ...] = ()  # tests whose outcomes differ between sides
    lost: tuple[Lost, ...] = ()  # metrics a side stopped measuring

    @property
    def verdict(self) -> str:
        words = [r.verdict for r in self.results]
        if self.lost:  # never "same" while a side stopped measuring a metric
            words.append("inconclusive")
        if self.outcomes:  # never "same" while a test fails or skips on one side only
            words.append("regressed" if any(d["worse"] for d in self.outcomes) else "inconclusive")
        return stats.overall(words)

    @property
    def exit_code(self) -> int:
        words = {r.verdict for r in self.results}
        if "regressed" in words or self.outcomes:
            return 1
        if self.lost:
            return 1  # a metric a side lost or never had: --inconclusive ok cannot pass it
        if any(not r.interval.exists for r in self.results):
            return 1  # too few rounds for any interval: --inconclusive ok cannot pass no evidence
        if "inconclusive" in words and not self.inconclusive_ok:
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "a": {**self.a.to_dict(), "fingerprint": dict(self.fingerprints["A"])},
            "b": {**self.b.to_dict(), "fingerprint": dict(self.fingerprints["B"])},
            "rounds": self.rounds,
            "max_rounds": self.max_rounds,
            "looks": list(self.looks),
            "alpha": self.alpha,
            "metrics": [r.to_dict() for r in self.results],
            "texts": [dict(t) for t in self.texts],
            "logprobs": [dict(t) for t in self.logprobs],
            "outcomes": [dict(d) for d in self.outcomes],
            "lost": [x.to_dict() for x in self.lost],
            "runs": [
                {
                    "side": r.side,
                    "round": r.round,
                    "seconds": round(r.seconds, 3),
                    "exit_code": r.exit_code,
                    "card": dict(r.card) if r.card is not None else None,
                }
                for r in self.runs
            ],
            "seconds": round(self.seconds, 3),
            "verdict": self.verdict,
            "exit_code": self.exit_code,
        }


def fingerprint(side: Side, inventory: Mapping[str, Any]) -> dict[str, Any]:
    """A side's fingerprint: the keys of a baseline fingerprint (``environment_changes``
    reads them), from the side's own report, plus its interpreter and package versions."""
    env = dict(inventory.get("environment") or {})
    gpus = list(inventory.get("gpus") or [])
    gpu = gpus[0] if gpus else {}
    engine = next(
        (f"{name} {side.packages[name]}" for name in ("vllm", "sglang") if side.packages.get(name)),
        None,
    )
    return {
        "gpu_name": gpu.get("name", "cpu"),
        "gpu_uuid": gpu.get("uuid"),
        "gpu_memory_bytes": gpu.get("memory_total_bytes"),
        "driver_version": env.get("driver_version"),
        "cuda_driver_version": env.get("cuda_driver_version"),
        "cuda_runtime_version": env.get("cuda_runtime_version"),
        "torch_version": side.packages.get("torch") or env.get("torch_version"),
        "transformers_version": side.packages.get("transformers")
        or env.get("transformers_version"),
        "python_version": side.python_version or env.get("python_version"),
        "engine": engine,
        "python": side.python,
        "packages": dict(side.packages),
    }


def _decided(results: Iterable[MetricResult]) -> bool:
    return all(r.verdict != "inconclusive" for r in results)


def run_ab(
    a: Side,
    b: Side,
    pytest_args: Sequence[str],
    execute: Execute,
    *,
    rounds: int,
    tolerance: float = stats.TOLERANCE,
    alpha: float = stats.ALPHA,
    card_state: Callable[[], Mapping[str, Any] | None] = lambda: None,
    progress: Callable[[str], None] = lambda line: None,
    inconclusive_ok: bool = False,
) -> Outcome:
    """Rounds of A and B until every metric has a verdict at a planned look, or ``rounds``."""
    schedule = stats.looks(rounds, alpha=alpha)
    share = stats.look_alpha(schedule, alpha)
    if not schedule:
        progress(
            f"note: {rounds} rounds give no interval at {1 - alpha:.0%} (the paired interval "
            f"needs >= {stats.min_pairs(alpha)} rounds); every metric will be inconclusive"
        )
    began = time.monotonic()
    runs: list[Run] = []
    results: list[MetricResult] = []
    done = 0
    r = 0
    try:
        for r in range(1, rounds + 1):
            order = (a, b) if r % 2 else (b, a)
            for side in order:
                state = card_state()
                run = execute(side, r, pytest_args)
                runs.append(_with_card(run, state))
            done = r
            pair = [x for x in runs if x.round == r]
            shown = sorted(pair, key=lambda x: x.side)
            progress(
                f"round {r}/{rounds}: " + ", ".join(f"{x.side} {x.seconds:.1f} s" for x in shown)
            )
            if r == 1:
                _check_first_round(a, b, pair)
            if r in schedule:
                results = judge(runs, tolerance, share)
                if _decided(results) or outcome_differences(runs) or lost_metrics(runs):
                    break
    except KeyboardInterrupt:
        # the side's run was stopped where it ran (child.run_child); the outputs come from
        # the Outcome, which there is none of
        raise Interrupted(
            f"interrupted in round {max(r, 1)} of at most {rounds}; no verdict, nothing written"
        ) from None
    if not results:
        results = judge(runs, tolerance, share)
    inventories = {x.side: x.inventory for x in runs}
    return Outcome(
        a,
        b,
        done,
        rounds,
        schedule,
        alpha,
        tuple(results),
        tuple(runs),
        tuple(text_agreement(runs)),
        tuple(golden_agreement(runs)),
        {"A": fingerprint(a, inventories["A"]), "B": fingerprint(b, inventories["B"])},
        time.monotonic() - began,
        inconclusive_ok,
        tuple(outcome_differences(runs)),
        tuple(lost_metrics(runs)),
    )


def _with_card(run: Run, state: Mapping[str, Any] | None) -> Run:
    from dataclasses import replace

    return replace(run, card=state) if state is not None else run


def _check_first_round(a: Side, b: Side, pair: Sequence[Run]) -> None:
    by_side = {x.side: x for x in pair}
    first, second = by_side["A"], by_side["B"]
    if not first.values and not second.values:
        raise GpufitError(
            "no test of the selection recorded a gpufit metric on either side (suite checks "
            "such as throughput do; a plain test records one as the gpufit_measurement "
            "property, see docs/ab.md); nothing to compare"
        )
    lonely = one_sided(first, second)
    if lonely:
        raise GpufitError(
            "a metric was measured on one side only, so it cannot be compared: "
            + "; ".join(lonely[:5])
            + (f" (and {len(lonely) - 5} more)" if len(lonely) > 5 else "")
            + "; select the tests both environments can run (-k) or fix the failing side"
        )
    commands = list(first.launches) + list(second.launches)
    unused = unused_keys([a, b], commands)
    if unused:
        shown = "; ".join(" ".join(c) for c in commands) or "none"
        raise GpufitError(
            f"KEY {', '.join(unused)} of --a/--b is written as {{KEY}} in no launch command of "
            f"the selected tests (their launch commands: {shown}); python= picks the "
            "interpreter, any other KEY only fills launch commands"
        )


def temporary_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="gpufit-ab-")
