"""Fleet health: runs of one GPU model and suite from many hosts, each against the fleet median.

A throttled clock, a PCIe link trained at x8 or another driver makes one host slower than its
peers of the same card model; against its own accepted baseline that can pass unnoticed (the
baseline may come from that same host), against the fleet it shows. Everything here is pure:
records in, figures and verdicts out.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.baseline.compare import (
    METRIC_LABELS,
    Comparison,
    base_metric,
    format_number,
    judge,
    metric_values,
)
from pytest_gpufit.hardware.nvml import SLOWDOWN_REASONS
from pytest_gpufit.hardware.records import HOST_FACTS, pcie_text, power_text
from pytest_gpufit.metrics import find

MIN_OTHER_HOSTS = 2  # a median of one other host is that host: no fleet


@dataclass(frozen=True)
class HostRun:
    """The latest stored run of one suite on one host."""

    host: str
    run_id: str
    fingerprint: Mapping[str, Any]
    values: Mapping[str, Mapping[str, float]]  # node id -> metric -> value


def run_values(record: Mapping[str, Any], where: str) -> dict[str, dict[str, float]]:
    """Node id -> metric -> value of every check of a record that measured something."""
    out: dict[str, dict[str, float]] = {}
    for nodeid, entry in record["results"].items():
        if entry.get("outcome") == "skipped":
            continue
        values = metric_values(entry.get("metrics", {}), f"{where}: {nodeid}")
        if values:
            out[nodeid] = values
    return out


def latest_per_host(
    records: Iterable[tuple[str, Mapping[str, Any]]],
) -> tuple[list[HostRun], int]:
    """The latest run per host (by creation time, then id), and how many runs name no host
    (saved before hosts were recorded: they are shown nowhere in the fleet, and counted)."""
    latest: dict[str, tuple[tuple[float, str], HostRun]] = {}
    unnamed = 0
    for where, record in records:
        host = record["fingerprint"].get("host")
        if not isinstance(host, str) or not host:
            unnamed += 1
            continue
        created = record.get("created")
        when = float(created) if isinstance(created, (int, float)) else 0.0
        order = (when, str(record["id"]))
        if host in latest and latest[host][0] >= order:
            continue
        run = HostRun(host, str(record["id"]), record["fingerprint"], run_values(record, where))
        latest[host] = (order, run)
    return [run for _, run in sorted(latest.values(), key=lambda item: item[1].host)], unnamed


def medians(runs: Sequence[HostRun]) -> dict[tuple[str, str], tuple[float, int]]:
    """(node id, metric) -> (median over the hosts that measured it, how many hosts)."""
    seen: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        for nodeid, values in run.values.items():
            for metric, value in values.items():
                seen.setdefault((nodeid, metric), []).append(value)
    return {key: (float(statistics.median(v)), len(v)) for key, v in seen.items()}


def against(
    values: Mapping[str, Mapping[str, float]],
    fleet: Mapping[tuple[str, str], tuple[float, int]],
    tolerance: float,
) -> list[tuple[str, Comparison, int]]:
    """Each metric of ``values`` judged against the fleet median (direction-aware: a lower
    decode rate is worse, a lower TTFT is better), with the number of hosts in the median."""
    out = []
    for nodeid, metrics in sorted(values.items()):
        for metric, value in sorted(metrics.items()):
            if (nodeid, metric) not in fleet:
                continue
            median, hosts = fleet[(nodeid, metric)]
            out.append((nodeid, judge(metric, median, [value], tolerance), hosts))
    return out


def metric_label(metric: str) -> str:
    base = base_metric(metric)
    if base == metric:
        return METRIC_LABELS.get(metric, metric)
    return f"{metric[: -len(base) - 1]} {METRIC_LABELS[base]}"


# ---- host facts ---------------------------------------------------------------------------


def host_facts(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run's host facts, each of the right type or None (a record edited by hand must
    not crash the fleet view: a figure that is not a whole number is left out)."""
    raw = fingerprint.get("host_facts")
    raw = raw if isinstance(raw, Mapping) else {}
    out: dict[str, Any] = {}
    for name in HOST_FACTS:
        value = raw.get(name)
        if name == "clock_event_reasons":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        out[name] = value if ok else None
    return out


def facts_of(fingerprint: Mapping[str, Any]) -> dict[str, str]:
    """The host facts of a run as short texts: PCIe, clock events, power, driver."""
    facts = host_facts(fingerprint)
    out: dict[str, str] = {}
    link = pcie_text(facts)
    if link:
        out["PCIe"] = link
    reasons = facts.get("clock_event_reasons")
    if isinstance(reasons, list):
        out["clock events"] = ", ".join(str(r) for r in reasons) or "none"
    power = power_text(facts)
    if power:
        out["power limit"] = power
    driver = _driver(fingerprint)
    if driver:
        out["driver"] = driver
    return out


def _driver(fingerprint: Mapping[str, Any]) -> str | None:
    value = fingerprint.get("driver_version")
    return value if isinstance(value, str) and value else None


def _max_link(fingerprint: Mapping[str, Any]) -> str | None:
    raw = host_facts(fingerprint)
    gen, width = raw.get("pcie_link_gen_max"), raw.get("pcie_link_width_max")
    return None if gen is None and width is None else f"gen{gen} x{width}"


def _enforced_power(fingerprint: Mapping[str, Any]) -> str | None:
    raw = host_facts(fingerprint)
    if raw["power_limit_mw"] is None:
        return None
    return f"{raw['power_limit_mw'] / 1000:.0f} W"


def suspicious_facts(
    fingerprint: Mapping[str, Any], others: Sequence[Mapping[str, Any]]
) -> list[str]:
    """What sets this host apart: a slowdown reason, a power limit below its default, and a
    max PCIe link, driver or power limit unlike most other hosts. The current link is never
    held against it: an idle card downtrains its link (current below max is normal)."""
    notes = []
    facts = host_facts(fingerprint)
    reasons = facts.get("clock_event_reasons")
    if isinstance(reasons, list):
        slow = [str(r) for r in reasons if r in SLOWDOWN_REASONS]
        if slow:
            notes.append(f"clocks held back: {', '.join(slow)}")
    enforced, default = facts.get("power_limit_mw"), facts.get("power_limit_default_mw")
    capped = isinstance(enforced, int) and isinstance(default, int) and enforced < default
    if capped:
        notes.append(f"power limit {power_text(facts)}")
    for label, read in (
        ("max PCIe link", _max_link),
        ("driver", _driver),
        ("power limit", _enforced_power),
    ):
        if capped and label == "power limit":
            continue  # said above, with its default
        mine = read(fingerprint)
        theirs = Counter(v for v in (read(o) for o in others) if v is not None)
        if mine is None or not theirs:
            continue
        usual, _ = theirs.most_common(1)[0]
        if mine != usual and mine not in theirs:
            notes.append(f"{label} {mine} (other hosts: {usual})")
    return notes


# ---- the gate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetVerdict:
    """This run of one suite against the other hosts' latest runs."""

    failures: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # no verdict (too few hosts), better than the fleet


def judge_fleet(
    host: str,
    gpu_name: str,
    suite: str,
    fingerprint: Mapping[str, Any],
    values: Mapping[str, Mapping[str, float]],
    others: Sequence[HostRun],
    tolerance: float,
    strict: bool,
) -> FleetVerdict:
    """Fail this host where a metric sits beyond ``tolerance`` on the worse side of the
    median of ``others`` (the other hosts' latest runs of the same GPU model and suite).

    With fewer than two other hosts there is no fleet to judge against: that is said, and
    under ``strict`` (the fail policy) it fails, since the check that was asked for did not run.
    """
    where = f"{gpu_name}, suite {suite}"
    if len(others) < MIN_OTHER_HOSTS:
        named = ", ".join(o.host for o in others) or "none"
        message = (
            f"fleet check of host {host} ({where}): no verdict, {len(others)} other "
            f"host{'s' * (len(others) != 1)} in the store ({named}), {MIN_OTHER_HOSTS} needed; "
            "save runs of this suite from more hosts (--gpufit-baseline=compare saves one "
            "per session), or unset --gpufit-fleet-tolerance for this runner class"
        )
        return FleetVerdict(failures=(message,)) if strict else FleetVerdict(notes=(message,))
    fleet = medians(others)
    judged = against(values, fleet, tolerance)
    if not values:
        message = (
            f"fleet check of host {host} ({where}): no check of this run measured a figure, "
            "so nothing was compared"
        )
        return FleetVerdict(failures=(message,)) if strict else FleetVerdict(notes=(message,))
    # A figure no other host measured (a check new to the suite) has no median: no verdict.
    judged += [
        (nodeid, judge(metric, value, [value], tolerance), 0)
        for nodeid, metrics in sorted(values.items())
        for metric, value in sorted(metrics.items())
        if (nodeid, metric) not in fleet
    ]
    facts = facts_of(fingerprint)
    odd = suspicious_facts(fingerprint, [o.fingerprint for o in others])
    shown = "; ".join(f"{k} {v}" for k, v in facts.items()) or "no host facts recorded"
    apart = f"; unlike the fleet: {'; '.join(odd)}" if odd else ""
    failures: list[str] = []
    notes: list[str] = []
    for nodeid, c, hosts in judged:
        if hosts < MIN_OTHER_HOSTS:
            few = (
                f"fleet check of host {host} ({where}): {nodeid}: no verdict on "
                f"{metric_label(c.metric)}, {hosts} other host{'s' * (hosts != 1)} measured it "
                f"({MIN_OTHER_HOSTS} needed)"
            )
            (failures if strict else notes).append(few)
            continue
        text = (
            f"{metric_label(c.metric)} {format_number(c.new)} vs fleet median "
            f"{format_number(c.old)} of {hosts} other host{'s' * (hosts != 1)} "
            f"({c.change:+.1%}, tolerance {c.tolerance:.0%})"
        )
        if c.verdict == "ok" and c.records_only():
            notes.append(
                f"fleet: host {host} ({where}): {nodeid}: {text}: a tolerance of 100% or more "
                f"can never fail on {metric_label(c.metric)} (it cannot fall by more than "
                "100%); lower --gpufit-fleet-tolerance to judge it"
            )
        if c.verdict == "worse":
            failures.append(
                f"fleet: host {host} is out of line ({where}): {nodeid}: {text}; this host: "
                f"{shown}{apart}"
            )
        elif c.verdict == "better":
            notes.append(f"fleet: host {host} ({where}): {nodeid}: {text}: better than the fleet")
    return FleetVerdict(tuple(failures), tuple(notes))


# ---- the fleet view (gpufit baseline fleet) ---------------------------------------------------

MAX_HISTORY = 20  # runs per host the view reads: the recent ones (a host's old runs age out)


def host_history(
    records: Iterable[tuple[str, Mapping[str, Any]]],
) -> dict[str, dict[tuple[str, str], list[float]]]:
    """host -> (node id, metric) -> the figures of its latest ``MAX_HISTORY`` runs, oldest
    first; runs that name no host are left out (``latest_per_host`` counts them)."""
    by_host: dict[str, list[tuple[tuple[float, str], str, Mapping[str, Any]]]] = {}
    for where, record in records:
        host = record["fingerprint"].get("host")
        if not isinstance(host, str) or not host:
            continue
        created = record.get("created")
        when = float(created) if isinstance(created, (int, float)) else 0.0
        by_host.setdefault(host, []).append(((when, str(record["id"])), where, record))
    out: dict[str, dict[tuple[str, str], list[float]]] = {}
    for host, runs in by_host.items():
        runs.sort(key=lambda r: r[0])
        samples: dict[tuple[str, str], list[float]] = {}
        for _, where, record in runs[-MAX_HISTORY:]:
            for nodeid, values in run_values(record, where).items():
                for metric, value in values.items():
                    samples.setdefault((nodeid, metric), []).append(value)
        out[host] = samples
    return out


def interval_text(
    metric: str, here: Sequence[float], others: Sequence[float], tolerance: float
) -> tuple[str, str]:
    """(text, verdict) of one host's figures against the other hosts', with the interval of
    ``gpufit ab`` (``pytest_gpufit.ab.stats``): the Hodges-Lehmann ratio this host / the
    others and its Mann-Whitney 95% interval, judged against the tolerance in the metric's
    direction.

    >>> interval_text("decode_tok_s", [60.0, 61.0, 59.0, 60.5], [100.0, 99.0, 101.0, 98.0], 0.15)
    ('4 runs here, 4 on other hosts: this host / the others 0.604 [0.584, 0.622]', 'regressed')
    >>> interval_text("decode_tok_s", [60.0], [100.0, 99.0], 0.15)[1]
    'inconclusive'
    """
    from pytest_gpufit.ab import stats  # the same interval as gpufit ab

    found = find(metric)
    higher = True if found is None else found.higher_is_better
    iv = stats.interval(list(others), list(here), stats.ALPHA)
    word = stats.verdict(iv, higher, tolerance)
    runs = f"{len(here)} run{'s' * (len(here) != 1)} here, {len(others)} on other hosts"
    if not iv.exists:
        return (
            f"{runs}: this host / the others {iv.ratio:.3f}, no interval: "
            f"{stats.why_inconclusive(iv, stats.ALPHA)}",
            word,
        )
    return f"{runs}: this host / the others {iv.ratio:.3f} [{iv.low:.3f}, {iv.high:.3f}]", word


def view_lines(
    gpu_name: str,
    suite: str,
    runs: Sequence[HostRun],
    unnamed: int,
    tolerance: float,
    history: Mapping[str, Mapping[tuple[str, str], Sequence[float]]] | None = None,
) -> list[str]:
    """Per host, each metric of its latest run, and its recent runs against the other hosts'
    recent runs with the interval of ``gpufit ab`` (``history``, from ``host_history``): a
    verdict only where the runs are enough to give one, with the host facts beside."""
    history = history or {}
    unnamed_text = (
        f"; {unnamed} run{'s' * (unnamed != 1)} name no host (saved before hosts were "
        "recorded) and are left out"
        if unnamed
        else ""
    )
    lines = [
        f"{gpu_name}, suite {suite}: {len(runs)} host{'s' * (len(runs) != 1)} "
        f"(latest run of each; up to {MAX_HISTORY} recent runs per host judged){unnamed_text}"
    ]
    if len(runs) < 2:
        lines.append("  (one host: no fleet to compare with)" if runs else "  (no host)")
    for run in runs:
        facts = facts_of(run.fingerprint)
        shown = "; ".join(f"{k} {v}" for k, v in facts.items()) or "no host facts recorded"
        lines.append(f"  host {run.host} (run {run.run_id}): {shown}")
        for nodeid, values in sorted(run.values.items()):
            for metric, value in sorted(values.items()):
                key = (nodeid, metric)
                here = list(history.get(run.host, {}).get(key, [value]))
                others = [
                    v
                    for host, samples in history.items()
                    if host != run.host
                    for v in samples.get(key, [])
                ]
                text = f"{nodeid}: {metric_label(metric)} {format_number(value)}"
                if not others:
                    lines.append(f"    {text} (no other host measured it)")
                    continue
                said, word = interval_text(metric, here, others, tolerance)
                mark = {"regressed": "WORSE", "improved": "BETTER"}.get(word)
                beyond = f"  {mark} beyond {tolerance:.0%}" if mark else ""
                lines.append(f"    {text} ({said}; {word}){beyond}")
        others_fp = [o.fingerprint for o in runs if o.host != run.host]
        odd = suspicious_facts(run.fingerprint, others_fp)
        if odd:
            lines.append(f"    unlike the fleet: {'; '.join(odd)}")
    return lines
