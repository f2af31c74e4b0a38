"""What ``gpufit ab`` prints and writes: the text table, the Markdown of the job summary."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_gpufit.ab.run import MetricResult, Outcome
from pytest_gpufit.ab.stats import why_inconclusive
from pytest_gpufit.baseline.fingerprint import environment_changes
from pytest_gpufit.metrics import format_value, label

HEAD = ("test", "metric", "A median", "B median", "B/A", "interval", "verdict")


def _ratio(value: float) -> str:
    return f"{value:.3f}"


def row(result: MetricResult) -> list[str]:
    iv = result.interval
    shown = f"[{_ratio(iv.low)}, {_ratio(iv.high)}]" if iv.exists else "none"
    return [
        result.test,
        label(result.metric),
        format_value(result.metric, statistics.median(result.a)),
        format_value(result.metric, statistics.median(result.b)),
        _ratio(iv.ratio),
        shown,
        result.verdict,
    ]


def header_lines(outcome: Outcome) -> list[str]:
    looks = ", ".join(map(str, outcome.looks)) or "none"
    share = outcome.alpha / max(1, len(outcome.looks))
    changes = changed(outcome.fingerprints["A"], outcome.fingerprints["B"])
    return [
        f"A: {_side_text(outcome.a.vars, outcome.a.python)}{_plugin(outcome.a.gpufit_version)}",
        f"B: {_side_text(outcome.b.vars, outcome.b.python)}{_plugin(outcome.b.gpufit_version)}",
        f"changed: {', '.join(changes) or 'nothing gpufit records (same versions)'}",
        f"{outcome.rounds} of at most {outcome.max_rounds} rounds (A B, B A, ...), "
        f"{outcome.seconds:.0f} s; looks after rounds {looks}, each interval at "
        f"{1 - share:.1%} (Bonferroni over the looks: {1 - outcome.alpha:.0%} overall); "
        f"tolerance {_tolerance(outcome.results)}",
    ]


def changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What differs between two sides' fingerprints: the baseline's environment fields, then
    every other installed package (``slowpkg 1.0 -> 2.0``, ``vllm none -> 0.8.1``).

    >>> changed({"packages": {"x": "1", "torch": "2.5"}, "torch_version": "2.5"},
    ...         {"packages": {"x": "2", "torch": "2.6"}, "torch_version": "2.6"})
    ['torch 2.5 -> 2.6', 'x 1 -> 2']
    """
    out = environment_changes(a, b)
    shown = {"torch", "transformers", "vllm", "sglang"}
    pa, pb = a.get("packages") or {}, b.get("packages") or {}
    for name in sorted((set(pa) | set(pb)) - shown):
        if pa.get(name) != pb.get(name):
            out.append(f"{name} {pa.get(name) or 'none'} -> {pb.get(name) or 'none'}")
    return out


def _tolerance(results: Sequence[MetricResult]) -> str:
    values = sorted({r.tolerance for r in results})
    return ", ".join(f"{v:.0%}" for v in values) or "-"


def _plugin(version: str | None) -> str:
    return f" (pytest-gpufit {version})" if version else ""


def _side_text(variables: Mapping[str, str], python: str) -> str:
    rest = ", ".join(f"{k}={v}" for k, v in sorted(variables.items()) if k != "python")
    return f"python {python}" + (f", {rest}" if rest else "")


def card_lines(outcome: Outcome) -> list[str]:
    """The card's state over the rounds, in one line; or why it was not read."""
    states = [r.card for r in outcome.runs if r.card is not None]
    if not states:
        return ["card state: not recorded"]
    if all("nvml" in s for s in states):
        return [f"card state: none (no NVML here: {states[0]['nvml']})"]

    def spread(key: str, unit: str) -> str | None:
        values = [s[key] for s in states if isinstance(s.get(key), (int, float))]
        if not values:
            return None
        low, high = min(values), max(values)
        return f"{key.rsplit('_', 1)[0].replace('_', ' ')} {low}-{high} {unit}"

    parts = [
        spread("sm_clock_mhz", "MHz"),
        spread("memory_clock_mhz", "MHz"),
        spread("temperature_c", "C"),
    ]
    events = sorted({e for s in states for e in (s.get("clock_event_reasons") or [])})
    parts.append(f"clock events: {', '.join(events) or 'none'}")
    others = max((s.get("processes_memory_bytes") or 0) for s in states)
    parts.append(f"other processes' memory up to {others / 1e9:.2f} GB")
    return ["card state over the rounds: " + "; ".join(p for p in parts if p)]


def text_lines(outcome: Outcome) -> list[str]:
    out = []
    for t in outcome.texts:
        out.append(
            f"greedy text {t['test']}: A and B equal in {t['equal_pairs']} of {t['pairs']} "
            f"pairs of runs ({t['rate']:.0%}); distinct texts A {t['a_distinct']}, "
            f"B {t['b_distinct']}"
        )
    return out


def logprob_lines(outcome: Outcome) -> list[str]:
    out = []
    for t in outcome.logprobs:
        diff, kl = t["max_logprob_diff"], t["kl_topk_mean"]
        out.append(
            f"logprobs {t['test']}: greedy top-1 of B agrees with A in {t['top1_agreement']:.0%} "
            f"of {t['steps']} steps; max |logprob diff| of the same token "
            f"{'-' if diff is None else f'{diff:.4f}'}; mean KL over the shared top-k "
            f"{'-' if kl is None else f'{kl:.2e}'} nats"
        )
    return out


def outcome_lines(outcome: Outcome) -> list[str]:
    """A test whose outcomes differ between the sides: it fails the A/B whatever its metrics."""

    def counts(by: Mapping[str, int]) -> str:
        return ", ".join(f"{n} {o}" for o, n in sorted(by.items())) or "not run"

    return [
        f"outcome differs: {d['test']}: A {counts(d['a'])}; B {counts(d['b'])} (exit 1: a test "
        "that fails or skips on one side only cannot be the same)"
        for d in outcome.outcomes
    ]


def lost_lines(outcome: Outcome) -> list[str]:
    """A metric a side stopped measuring: it fails the A/B whatever its interval says."""
    return [x.describe() for x in outcome.lost]


def notes(outcome: Outcome) -> list[str]:
    share = outcome.alpha / max(1, len(outcome.looks))
    lost = {(x.test, x.metric) for x in outcome.lost}  # their line says why
    return [
        f"inconclusive: {r.test} {label(r.metric)}: {why_inconclusive(r.interval, share)}"
        for r in outcome.results
        if r.verdict == "inconclusive" and (r.test, r.metric) not in lost
    ]


def table_lines(outcome: Outcome) -> list[str]:
    rows = [list(HEAD), *(row(r) for r in outcome.results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return (
        header_lines(outcome)
        + table
        + text_lines(outcome)
        + logprob_lines(outcome)
        + outcome_lines(outcome)
        + lost_lines(outcome)
        + card_lines(outcome)
        + notes(outcome)
        + [f"verdict: {outcome.verdict} (exit {outcome.exit_code})"]
    )


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(outcome: Outcome) -> str:
    lines = [f"### gpufit ab: {outcome.verdict}", ""]
    lines += [f"- {_md(line)}" for line in header_lines(outcome)]
    lines += ["", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(_md(c) for c in row(r)) + " |" for r in outcome.results]
    extra = text_lines(outcome) + logprob_lines(outcome) + outcome_lines(outcome)
    extra += lost_lines(outcome) + card_lines(outcome) + notes(outcome)
    if extra:
        lines += [""] + [f"- {_md(line)}" for line in extra]
    return "\n".join(lines) + "\n"


def record_text(record: Mapping[str, Any]) -> str:
    """One line for a stored A/B pair: ``B was A/B-tested against A on <card> on <date>``."""
    import time

    when = time.strftime("%Y-%m-%d", time.gmtime(float(record.get("created", 0))))
    a, b = record["a"]["fingerprint"], record["b"]["fingerprint"]
    changes = changed(a, b)
    return (
        f"A/B {record['id']}: B ({', '.join(changes) or b.get('python')}) was A/B-tested "
        f"against A on {b.get('gpu_name', 'cpu')} on {when}: {record['verdict']} after "
        f"{record['rounds']} rounds"
    )


def tested_lines(
    records: Sequence[Mapping[str, Any]], old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[str]:
    """The stored A/B pairs whose A has ``old``'s environment and B ``new``'s, on the same
    GPU model: what ``gpufit baseline diff OLD NEW`` adds about the change between them."""
    out = []
    for record in records:
        a, b = record["a"]["fingerprint"], record["b"]["fingerprint"]
        same_card = a.get("gpu_name") == old.get("gpu_name") == new.get("gpu_name")
        if same_card and _matches(a, old) and _matches(b, new):
            out.append(record_text(record))
    return out


def _matches(side: Mapping[str, Any], run: Mapping[str, Any]) -> bool:
    """A side's environment is a baseline run's: no version differs (the engine only where
    the run names one: an in-process suite's run names none, whatever is installed)."""
    changes = environment_changes(side, run)
    if run.get("engine") is None:
        changes = [c for c in changes if not c.startswith("engine ")]
    return not changes
