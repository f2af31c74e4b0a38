"""What sessions report: the header, the terminal summaries, the JSON report, Markdown."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpufit.allreduce import format_size
from pytest_gpufit.atomic import why_unwritable, write_text_atomic
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.records import (
    Environment,
    Gpu,
    GpuLink,
    Inventory,
    pcie_text,
    power_text,
)
from pytest_gpufit.metrics import BY_NAME, format_value
from pytest_gpufit.numbers import format_number, format_percent, plural
from pytest_gpufit.requirements import Verdict
from pytest_gpufit.units import format_gb, format_gib

OUTCOMES = ("passed", "failed", "error", "skipped")


@dataclass(frozen=True)
class TestResult:
    """How one test ended, with the one-line reason for a failure, an error or a skip."""

    __test__ = False  # a record, not a pytest test class

    nodeid: str
    outcome: str  # one of OUTCOMES
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def one_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text``, cut at ``limit`` characters.

    >>> one_line("\\nAssertionError: 3 != 4\\nmore"), one_line("x" * 9, limit=5)
    ('AssertionError: 3 != 4', 'xxxx…')
    """
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _longrepr_reason(longrepr: Any) -> str:
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message)
    return str(longrepr)


def result_from_report(report: Any) -> TestResult | None:
    """What a ``pytest.TestReport`` says of its test; None for a phase that decides nothing.

    Setup and teardown failures are errors; an expected failure (xfail) is a skip.
    """
    xfail = getattr(report, "wasxfail", None)
    if report.outcome == "skipped":
        reason = f"xfail: {xfail}" if xfail is not None else _longrepr_reason(report.longrepr)
        return TestResult(report.nodeid, "skipped", one_line(reason))
    if report.outcome == "failed":
        outcome = "failed" if report.when == "call" else "error"
        return TestResult(report.nodeid, outcome, one_line(_longrepr_reason(report.longrepr)))
    if report.when == "call":
        return TestResult(report.nodeid, "passed")
    return None


def merge_results(previous: TestResult | None, new: TestResult) -> TestResult:
    """The result a test keeps across its phases: the first that did not pass.

    >>> merge_results(TestResult("t", "passed"), TestResult("t", "error", "boom")).outcome
    'error'
    >>> merge_results(TestResult("t", "failed", "x"), TestResult("t", "error", "y")).reason
    'x'
    """
    if previous is None or previous.outcome == "passed":
        return new
    return previous


def version_text(what: str, version: str | None) -> str:
    """``driver 550.54`` or, when there is none, ``no driver``.

    >>> version_text("driver", "550.54"), version_text("CUDA", None)
    ('driver 550.54', 'no CUDA')
    """
    return f"{what} {version}" if version else f"no {what}"


def environment_text(env: Environment, torch: bool = True) -> str:
    """Driver, CUDA (and torch) versions in one phrase, saying which are missing."""
    parts = [
        version_text("driver", env.driver_version),
        version_text("CUDA", env.cuda_driver_version),
    ]
    if torch:
        parts.append(version_text("torch", env.torch_version))
    return ", ".join(parts)


def inventory_lines(inventory: Inventory) -> list[str]:
    """One line per GPU (or why there is none), for the report header and expect errors."""
    if not inventory.gpus:
        return [f"no GPU: {inventory.reason or 'none found'}"]
    versions = "" if inventory.simulated else ", " + environment_text(inventory.environment, False)
    lines = []
    for g in inventory.gpus:
        memory = f"{format_gb(g.memory_total_bytes)} ({format_gib(g.memory_total_bytes)})"
        sim = f" [simulated {g.catalog_id}]" if g.simulated else ""
        lines.append(f"{g.label}, {memory}, CC {g.cc_text}{versions}{sim}")
        facts = host_facts_text(g)
        if facts:
            lines.append(f"  {facts}")
    lines += [link_text(link) for link in inventory.links]
    return lines + [f"warning: {w}" for w in inventory.warnings]


def link_text(link: GpuLink) -> str:
    """One short line per GPU pair: whether P2P works, and how the pair is joined.

    >>> link_text(GpuLink(0, 1, "single-switch", "ok", "ok"))
    'link GPU0-GPU1: P2P ok; topology: single-switch, through one PCIe switch [PIX]'
    >>> off = GpuLink(0, 1, "system", "chipset-not-supported", "chipset-not-supported")
    >>> print(link_text(off))  # doctest: +NORMALIZE_WHITESPACE
    link GPU0-GPU1: P2P read/write not supported by the chipset; topology: system,
    across CPU sockets [SYS]
    """
    return f"link {link.name}: {'; '.join(link.p2p_problems()) or 'P2P ok'}; {link.where()}"


def host_facts_text(gpu: Gpu) -> str | None:
    """``PCIe gen1 x16 (max gen5 x16), clock events gpu_idle, power limit 700 W``: what NVML
    said about the card in this host (None when it said nothing, as for simulated cards).
    The link of an idle card is downtrained: current below max is normal at start-up."""
    facts = gpu.host_facts()
    parts = []
    link = pcie_text(facts)
    if link:
        parts.append(f"PCIe {link}")
    if facts["clock_event_reasons"] is not None:
        parts.append(f"clock events {', '.join(facts['clock_event_reasons']) or 'none'}")
    power = power_text(facts)
    if power:
        parts.append(f"power limit {power}")
    return ", ".join(parts) or None


def summary_lines(inventory: Inventory, verdicts: Mapping[str, Verdict]) -> list[str]:
    """Per card: how many gated tests run (or would, simulated) and why the rest do not."""
    if not verdicts:
        return []
    verb = "would run" if inventory.simulated else "ran"
    ok = [v for v in verdicts.values() if v.ok]
    lines = [
        f"gpufit: {format_number(len(ok))} of {plural(len(verdicts), 'gated test')} {verb}"
        + (" (simulated)" if inventory.simulated else "")
    ]
    for g in inventory.gpus:
        on_card = sum(1 for v in ok if g.index in v.devices)
        name = g.catalog_id or g.name
        lines.append(f"  {g.label.split()[0]} {name}: {plural(on_card, 'gated test')} {verb} here")
    reasons = Counter(v.reason for v in verdicts.values() if not v.ok)
    for reason, count in reasons.most_common(5):
        lines.append(f"  not run ({format_number(count)}): {reason}")
    return lines


def report_data(
    inventory: Inventory,
    verdicts: Mapping[str, Verdict],
    measurements: Mapping[str, Mapping[str, Any]] | None = None,
    results: Iterable[TestResult] = (),
) -> dict[str, Any]:
    """The JSON report's content: inventory, verdicts, measurements, and how each test ended."""
    return {
        "inventory": inventory.to_dict(),
        "verdicts": {nodeid: v.to_dict() for nodeid, v in verdicts.items()},
        "measurements": dict(measurements or {}),
        "results": {r.nodeid: {"outcome": r.outcome, "reason": r.reason} for r in results},
    }


def write_report(
    path: Path,
    inventory: Inventory,
    verdicts: Mapping[str, Verdict],
    measurements: Mapping[str, Mapping[str, Any]] | None = None,
    results: Iterable[TestResult] = (),
) -> None:
    """Write the JSON report atomically: a reader never sees half a file. Raises OSError."""
    data = report_data(inventory, verdicts, measurements, results)
    write_text_atomic(Path(path), json.dumps(data, indent=2, sort_keys=True) + "\n")


COLUMNS = (
    "target",
    "dtype",
    "device",
    "est total",
    BY_NAME["load_seconds"].label,
    "peak / est weights",
    BY_NAME["prefill_tok_s"].label,
    f"{BY_NAME['decode_tok_s'].label} (% ceiling)",
    BY_NAME["ttft_ms"].label,
)


def _target_row(rows: list[Mapping[str, Any]]) -> list[str]:
    merged: dict[str, Any] = dict(rows[0])
    for row in rows:
        merged.update(row["metrics"])

    def get(name: str) -> str:
        value = merged.get(BY_NAME[name].key)
        return BY_NAME[name].format(value) if isinstance(value, (int, float)) else "-"

    peak = "-"
    if BY_NAME["peak_memory"].key in merged:  # beside the estimate, in its format
        peak = format_gb(merged["peak_allocated_bytes"])
        if "estimate_weights_bytes" in merged:
            peak += f" / {format_gb(merged['estimate_weights_bytes'])}"
    decode = get("decode_tok_s")
    if "decode_pct_of_ceiling" in merged:
        decode += f" ({format_number(merged['decode_pct_of_ceiling'])}%)"
    total = format_gb(merged["estimate_total_bytes"]) if "estimate_total_bytes" in merged else "-"
    # A target of all-reduce checks has no model: its dtype is a default that nothing ran in.
    modelless = all(row.get("check") == "allreduce" for row in rows)
    return [
        f"{merged['suite']}::{merged['target']}",
        "-" if modelless else merged["dtype"],
        merged["device"],
        total,
        get("load_seconds"),
        peak,
        get("prefill_tok_s"),
        decode,
        get("ttft_ms"),
    ]


def measurement_rows(measurements: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per target (COLUMNS), merging the measurements of its checks. A plain test's
    own ``gpufit_measurement`` may give its ``metrics`` alone: its file and name stand for the
    suite and the target.

    >>> measurement_rows({"t.py::test_speed": {"metrics": {"decode_tok_s": 12.5}}})[0][:3]
    ['t.py::test_speed', '-', '-']
    """
    by_target: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for nodeid, row in measurements.items():
        if not isinstance(row.get("metrics"), Mapping):
            continue
        suite, _, name = nodeid.partition("::")
        row = {"suite": suite, "target": name or nodeid, "dtype": "-", "device": "-", **row}
        by_target.setdefault((row["suite"], row["target"]), []).append(row)
    return [_target_row(rows) for rows in by_target.values()]


def measurement_table(measurements: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The rows as aligned text, with a header, then what the figures mean and served details."""
    rows = [list(COLUMNS), *measurement_rows(measurements)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    extra = served_lines(measurements) + allreduce_lines(measurements)
    return table + extra + backend_notes(measurements)


# What each backend's speed figures mean: they are not the same measurement.
BACKEND_MEANING = {
    "transformers": (
        "transformers targets: the model's own forward loop in the test process (decode is "
        "about 1.29x generate() on the CPU, measured); load s and peak memory are this process's"
    ),
    "openai": (
        "openai targets: what a client of the server sees over HTTP, streamed (TTFT to the "
        "first content chunk, decode = the server's usage tokens over E2E - TTFT, load levels "
        "as vLLM's benchmark names them); memory only as the engine's log states it"
    ),
}


def backend_notes(measurements: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per backend present saying what its figures mean."""
    present = {str(row.get("backend", "transformers")) for row in measurements.values()}
    if present == {"transformers"}:
        return []  # the table as it always was: only one kind of figure
    return [f"- {BACKEND_MEANING[b]}" for b in sorted(present) if b in BACKEND_MEANING]


def allreduce_lines(measurements: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each all-reduce check's two baseline figures, with what they were measured on.

    >>> row = {"suite": "link", "target": "pair", "check": "allreduce", "metrics": {
    ...     "allreduce_busbw_gb_s": 52.4, "allreduce_latency_us": 13.5,
    ...     "allreduce_busbw_size_bytes": 2**26, "allreduce_latency_size_bytes": 8,
    ...     "allreduce_backend": "nccl", "allreduce_ranks": 2, "allreduce_dtype": "bf16"}}
    >>> print(*allreduce_lines({"x": row}))  # doctest: +NORMALIZE_WHITESPACE
    link::pair: all-reduce nccl, 2 ranks, bf16: bus bandwidth 52.4 GB/s at 64 MiB,
    latency 13.5 us at 8 B
    """
    lines = []
    for row in measurements.values():
        metrics = row.get("metrics") or {}
        busbw, latency = metrics.get("allreduce_busbw_gb_s"), metrics.get("allreduce_latency_us")
        if row.get("check") != "allreduce" or busbw is None or latency is None:
            continue  # a check that failed before it measured says nothing here
        what = (
            f"all-reduce {metrics.get('allreduce_backend')}, "
            f"{metrics.get('allreduce_ranks')} ranks, {metrics.get('allreduce_dtype')}"
        )
        large = format_size(int(metrics.get("allreduce_busbw_size_bytes", 0)))
        small = format_size(int(metrics.get("allreduce_latency_size_bytes", 0)))
        lines.append(
            f"{row.get('suite')}::{row.get('target')}: {what}: bus bandwidth "
            f"{BY_NAME['allreduce_busbw_gb_s'].format(busbw)} GB/s at {large}, latency "
            f"{BY_NAME['allreduce_latency_us'].format(latency)} us at {small}"
        )
    return lines


def served_lines(measurements: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Engine, what its log says it allocated (beside the fit estimate), and each load level."""
    lines = []
    for row in measurements.values():
        metrics = row.get("metrics") or {}
        name = f"{row.get('suite')}::{row.get('target')}"
        if row.get("check") == "serves":
            parts = [f"engine {metrics.get('engine') or 'unknown'}"]
            if "engine_weights_gib" in metrics:
                text = f"log: weights {format_number(metrics['engine_weights_gib'])} GiB"
                if "estimate_weights_bytes" in metrics:
                    text += f" (fit estimate {format_gb(metrics['estimate_weights_bytes'])})"
                parts.append(text)
            if "engine_kv_cache_tokens" in metrics:
                parts.append(f"KV cache {format_number(metrics['engine_kv_cache_tokens'])} tokens")
            if "engine_max_concurrency" in metrics:
                parts.append(f"max concurrency {metrics['engine_max_concurrency']}x")
            if "server_log" in metrics:
                parts.append(f"server log {metrics['server_log']}")
            if len(parts) > 1 or metrics.get("engine"):  # a serves that failed says nothing
                lines.append(f"{name}: {', '.join(parts)}")
        prompts = metrics.get("prompts")
        said = f", {prompts} prompts" if isinstance(prompts, str) else ""  # unique or shared
        for level, figures in (metrics.get("levels") or {}).items():

            def get(figure: str, figures: Mapping[str, Any] = figures) -> str:
                metric = BY_NAME.get(figure)  # a level metric, read at its source; or a count
                value = figures.get(metric.key if metric else figure)
                if not isinstance(value, (int, float)):
                    return "-"
                return metric.format(value) if metric else format_number(value)

            lines.append(
                f"{name} load {level}: {get('completed')}/"
                f"{format_number(figures.get('completed', 0) + figures.get('failed', 0))} ok, "
                f"{get('output_tok_s')} tok/s, TTFT p50/p99 {get('ttft_ms_p50')}/"
                f"{get('ttft_ms_p99')} ms, ITL p99 {get('itl_ms_p99')} ms, "
                f"goodput {get('goodput')}{said}"
            )
    return lines


def _md(text: str) -> str:
    """Text safe in a Markdown table cell or list item: one line, no HTML, no cell breaks.

    >>> _md("a|b <br> c")
    'a\\\\|b &lt;br&gt; c'
    """
    text = " ".join(str(text).split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _code(text: str) -> str:
    """An inline code span that survives backticks in ``text``."""
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def outcome_counts(results: Sequence[TestResult]) -> str:
    """``3 passed, 1 failed, 2 skipped``, in pytest's order, leaving out outcomes that are zero.

    >>> outcome_counts([TestResult("a", "passed"), TestResult("b", "error")] * 2)
    '2 passed, 2 errors'
    """
    counts = Counter(r.outcome for r in results)
    parts = []
    for outcome in OUTCOMES:
        if counts[outcome]:
            word = plural(counts[outcome], "error") if outcome == "error" else None
            parts.append(word or f"{format_number(counts[outcome])} {outcome}")
    return ", ".join(parts)


LISTED = 50  # failures and skip reasons shown in the Markdown summary before "and N more"


def _simulated_banner(inventory: Inventory) -> list[str]:
    ids = ", ".join(g.catalog_id or g.name for g in inventory.gpus) or "no cards"
    return [
        f"> **Simulated: no real GPU was used.** The cards are catalog entries ({_md(ids)}); "
        "gated tests were planned, not run, and nothing here gates a deploy.",
        "",
    ]


def _results_lines(results: Sequence[TestResult]) -> list[str]:
    lines: list[str] = []
    failed = [r for r in results if r.outcome in ("failed", "error")]
    if failed:
        lines += ["", f"### Failed ({format_number(len(failed))})", ""]
        for r in failed[:LISTED]:
            kind = "error: " if r.outcome == "error" else ""
            lines.append(f"- {_code(r.nodeid)}: {kind}{_md(r.reason) or 'no reason given'}")
        if len(failed) > LISTED:
            lines.append(f"- and {plural(len(failed) - LISTED, 'more failure')}")
    skipped = Counter(r.reason for r in results if r.outcome == "skipped")
    if skipped:
        total = sum(skipped.values())
        lines += ["", f"### Skipped ({format_number(total)})", ""]
        for reason, count in skipped.most_common(LISTED):
            lines.append(f"- {plural(count, 'test')}: {_md(reason) or 'no reason given'}")
        if len(skipped) > LISTED:
            lines.append(f"- and {plural(len(skipped) - LISTED, 'more reason')}")
    return lines


def _baseline_lines(measurements: Mapping[str, Mapping[str, Any]]) -> list[str]:
    compared = [
        (nodeid, c)
        for nodeid, m in measurements.items()
        for c in m.get("metrics", {}).get("baseline", [])
    ]
    if not compared:
        return []
    lines = [
        "",
        "### Against the accepted baseline",
        "",
        "| check | metric | baseline | now | change | tolerance | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for nodeid, c in compared:
        lines.append(
            f"| {_md(nodeid)} | {c['metric']} | {format_value(c['metric'], c['old'])} | "
            f"{format_value(c['metric'], c['new'])} | {format_percent(c['change'], signed=True)} | "
            f"{format_percent(c['tolerance'])} | {c['verdict']} |"
        )
    return lines


def markdown_summary(
    inventory: Inventory,
    verdicts: Mapping[str, Verdict],
    measurements: Mapping[str, Mapping[str, Any]],
    results: Sequence[TestResult] = (),
) -> str:
    """A Markdown summary for CI job pages: the machine, the gate, the results, the baseline."""
    lines = ["## pytest-gpufit", ""]
    if inventory.simulated:
        lines += _simulated_banner(inventory)
    if inventory.gpus:
        for gpu in inventory.gpus:
            versions = "" if inventory.simulated else "; " + environment_text(inventory.environment)
            lines.append(f"- {_md(gpu.describe())}{versions}")
            facts = host_facts_text(gpu)
            if facts:
                lines.append(f"  - {_md(facts)}")
        lines += [f"- {_md(link_text(link))}" for link in inventory.links]
    else:
        lines.append(f"- no GPU: {_md(inventory.reason or 'none found')}")
    if verdicts:
        ran = sum(1 for v in verdicts.values() if v.ok)
        lines.append(
            f"- {format_number(ran)} of {plural(len(verdicts), 'gated test')} "
            "had what they need" + (" (simulated)" if inventory.simulated else "")
        )
    if results:
        lines.append(f"- tests: {outcome_counts(results)}")
    lines += _results_lines(results)
    if measurements:
        lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += [
            "| " + " | ".join(_md(c) for c in row) + " |" for row in measurement_rows(measurements)
        ]
        extra = served_lines(measurements) + allreduce_lines(measurements)
        extra += backend_notes(measurements)
        if extra:
            lines += ["", *(_md(x) if x.startswith("- ") else f"- {_md(x)}" for x in extra)]
    lines += _baseline_lines(measurements)
    return "\n".join(lines) + "\n"


def write_markdown_summary(
    inventory: Inventory,
    verdicts: Mapping[str, Verdict],
    measurements: Mapping[str, Mapping[str, Any]],
    path: str | None,
    step_summary: str | None,
    results: Sequence[TestResult] = (),
) -> None:
    """Write the summary to ``path`` and append it to the CI job summary file, if given.

    Both are tried; then a ``GpufitError`` names every one that failed. The session should
    call ``write_outputs`` instead, which returns the messages.
    """
    errors = write_outputs(
        inventory,
        verdicts,
        measurements,
        results,
        summary_path=path,
        step_summary=step_summary,
    )
    if errors:
        raise GpufitError("\n".join(errors))


def _failure(what: str, path: str | os.PathLike[str], error: OSError | ValueError) -> str:
    where = Path(os.path.abspath(path))
    return f"gpufit: cannot write {what} {where}: {why_unwritable(where, error)}"


def write_outputs(
    inventory: Inventory,
    verdicts: Mapping[str, Verdict],
    measurements: Mapping[str, Mapping[str, Any]],
    results: Sequence[TestResult] = (),
    *,
    report_path: str | os.PathLike[str] | None = None,
    summary_path: str | os.PathLike[str] | None = None,
    step_summary: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Write every output that can be written; return one message per output that could not.

    ``report_path`` gets the JSON report and ``summary_path`` the Markdown summary (each atomic,
    parent folders created); the summary is appended to ``step_summary`` (GitHub's
    ``GITHUB_STEP_SUMMARY``), which is never created as a folder. A message names the output,
    its absolute path and the OS reason; a failed write leaves no temporary file.
    """
    errors: list[str] = []
    if report_path:
        try:
            write_report(Path(report_path), inventory, verdicts, measurements, results)
        except (OSError, ValueError) as error:
            errors.append(_failure("the JSON report (--gpufit-report)", report_path, error))
    if not (summary_path or step_summary):
        return errors
    text = markdown_summary(inventory, verdicts, measurements, results)
    if summary_path:
        try:
            write_text_atomic(Path(summary_path), text)
        except (OSError, ValueError) as error:
            errors.append(_failure("the Markdown summary (--gpufit-summary)", summary_path, error))
    if step_summary:
        try:
            with open(step_summary, "a", encoding="utf-8") as handle:
                handle.write(text)
        except (OSError, ValueError) as error:
            errors.append(_failure("the job summary GITHUB_STEP_SUMMARY", step_summary, error))
    return errors
