"""A metric that a side stops measuring part-way through an A/B (the engine no longer reports
``decode_tok_s``, the test disappeared) is a verdict, never a silent drop: the pure decision
(``lost_metrics``), the run that stops at the next look, the outputs, and one run end to end
on real environments."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from ab_envs import make_venv

from pytest_gpufit.ab.output import markdown, table_lines
from pytest_gpufit.ab.run import Lost, Run, lost_metrics, run_ab
from pytest_gpufit.ab.sides import Side

T = "t.py::x"


def run(side: str, round_no: int, values: dict[str, dict[str, float]]) -> Run:
    return Run(side, round_no, 1.0, 0, values)


def both(round_no: int, a: dict[str, float], b: dict[str, float]) -> list[Run]:
    return [run("A", round_no, {T: a}), run("B", round_no, {T: b})]


def test_a_metric_b_stops_measuring_is_lost_from_that_round():
    full = {"decode_tok_s": 10.0, "ttft_ms": 5.0}
    runs = both(1, full, full) + both(2, full, full) + both(3, full, {"decode_tok_s": 9.0})
    runs += both(4, full, full)  # back again: the pairs of round 3 are still missing
    assert lost_metrics(runs) == [Lost(T, "ttft_ms", "B", 1, 2, 3)]
    assert lost_metrics(runs)[0].describe() == (
        "metric lost: t.py::x ttft_ms: present in rounds 1-2, missing on side B from round 3"
    )


def test_a_test_that_disappears_loses_all_its_metrics_on_that_side():
    full = {"decode_tok_s": 10.0, "ttft_ms": 5.0}
    runs = both(1, full, full) + [run("A", 2, {}), run("B", 2, {T: full})]
    assert [(x.metric, x.side, x.missing_from) for x in lost_metrics(runs)] == [
        ("decode_tok_s", "A", 2),
        ("ttft_ms", "A", 2),
    ]


def test_nothing_is_lost_while_both_sides_keep_measuring():
    full = {"decode_tok_s": 10.0}
    assert lost_metrics(both(1, full, full) + both(2, full, full)) == []
    # a metric that first appears in a later round is not "lost" on the rounds before it
    assert lost_metrics(both(1, {}, {}) + both(2, full, full)) == []


def side(label: str) -> Side:
    return Side(label, {"python": f"/{label}/bin/python"}, f"/{label}/bin/python")


def scripted(drop_from: int | None) -> tuple[list[int], object]:
    """An execute whose B decodes 5% faster, right at the tolerance's edge (decode_tok_s stays
    inconclusive), with the same ttft_ms on both sides; B stops reporting ttft_ms from round
    ``drop_from``."""
    rounds_run: list[int] = []

    def execute(s: Side, round_no: int, args: Sequence[str]) -> Run:
        rounds_run.append(round_no)
        wobble = 1 + (round_no % 3 - 1) * 0.001
        rate = 100.0 * wobble if s.label == "A" else 105.0 / wobble
        values = {"decode_tok_s": rate, "ttft_ms": 5.0 * wobble}
        if s.label == "B" and drop_from is not None and round_no >= drop_from:
            del values["ttft_ms"]
        return run(s.label, round_no, {T: values})

    return rounds_run, execute


@pytest.mark.parametrize("inconclusive_ok", [False, True])
def test_a_lost_metric_fails_the_run_and_stops_it_at_the_next_look(inconclusive_ok):
    rounds_run, execute = scripted(drop_from=8)
    outcome = run_ab(
        side("A"), side("B"), ["t.py"], execute, rounds=20, inconclusive_ok=inconclusive_ok
    )
    assert outcome.looks == (7, 14, 20)
    assert outcome.rounds == 14 and max(rounds_run) == 14  # the next look, not round 20
    assert outcome.lost == (Lost(T, "ttft_ms", "B", 1, 7, 8),)
    by_metric = {r.metric: r for r in outcome.results}
    assert by_metric["decode_tok_s"].verdict == "inconclusive"  # on the tolerance's edge
    # ttft_ms is the same on its 7 pairs, with an interval, but B lost it: not "same"
    ttft = by_metric["ttft_ms"]
    assert len(ttft.b) == 7 and ttft.interval.exists
    assert 0.99 < ttft.interval.low <= ttft.interval.high < 1.01
    assert ttft.verdict == "inconclusive"
    assert outcome.verdict == "inconclusive"
    assert outcome.exit_code == 1  # --inconclusive ok does not pass a lost metric
    line = "metric lost: t.py::x ttft_ms: present in rounds 1-7, missing on side B from round 8"
    assert line in table_lines(outcome)
    assert f"- {line}" in markdown(outcome).splitlines()
    assert not any(x.startswith("inconclusive: t.py::x TTFT") for x in table_lines(outcome))
    data = outcome.to_dict()
    assert data["lost"] == [
        {
            "test": T,
            "metric": "ttft_ms",
            "side": "B",
            "present_from": 1,
            "present_to": 7,
            "missing_from": 8,
            "never": False,
        }
    ]
    assert data["exit_code"] == 1


def test_without_a_lost_metric_the_same_run_passes_with_inconclusive_ok():
    rounds_run, execute = scripted(drop_from=None)
    outcome = run_ab(side("A"), side("B"), ["t.py"], execute, rounds=20, inconclusive_ok=True)
    assert outcome.lost == () and outcome.to_dict()["lost"] == []
    assert outcome.rounds == 20 and outcome.verdict == "inconclusive"
    assert {r.metric: r.verdict for r in outcome.results}["ttft_ms"] == "same"
    assert outcome.exit_code == 0


def test_a_lost_regression_stays_regressed():
    def execute(s: Side, round_no: int, args: Sequence[str]) -> Run:
        values = {"decode_tok_s": 100.0 if s.label == "A" else 50.0 + round_no % 3 * 0.01}
        if s.label == "B" and round_no == 20:
            values = {}
        return run(s.label, round_no, {T: values})

    outcome = run_ab(side("A"), side("B"), ["t.py"], execute, rounds=20)
    # halved from round 1: regressed at the first look, before anything was lost
    assert outcome.rounds == 7 and outcome.verdict == "regressed" and outcome.lost == ()


# -- end to end: real sides, B's engine stops reporting a metric in round 2 ----------------

GPUFIT = str(Path(sys.executable).with_name("gpufit"))

# Each side counts its own runs in a file beside the test (named for its venv); the venv
# called "drops" stops reporting ttft_ms from its second run on, as an engine upgrade that
# no longer reports a figure would.
LOSING_TARGET = """import json
import sys
from pathlib import Path


def test_speed(record_property):
    env = Path(sys.prefix).name
    counter = Path(__file__).with_name(f"runs-{env}.txt")
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    metrics = {"decode_tok_s": 100.0 + n % 3 * 0.01, "ttft_ms": 5.0}
    if env == "drops" and n >= 2:
        del metrics["ttft_ms"]
    entry = {
        "suite": "ab-lost", "target": "fake", "check": "throughput", "dtype": "-",
        "device": "cpu", "gpu": "cpu", "backend": "python", "metrics": metrics,
    }
    record_property("gpufit_measurement", json.dumps(entry))
"""


def test_b_dropping_a_metric_in_round_2_fails_the_ab_end_to_end(tmp_path):
    keeps = make_venv(tmp_path / "envs" / "keeps", None, None)
    drops = make_venv(tmp_path / "envs" / "drops", None, None)
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_lost.py").write_text(LOSING_TARGET)
    out, md = tmp_path / "ab.json", tmp_path / "ab.md"
    done = subprocess.run(
        [GPUFIT, "ab", "--a", f"python={keeps}", "--b", f"python={drops}", "--rounds", "20"]
        + ["--inconclusive", "ok", "--json", str(out), "--markdown", str(md)]
        + ["--", "test_lost.py"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    line = (
        "metric lost: test_lost.py::test_speed ttft_ms: present in round 1, missing on side B "
        "from round 2"
    )
    assert line in done.stdout.splitlines()
    assert line in md.read_text()
    data = json.loads(out.read_text())
    assert data["rounds"] == 7  # stopped at the first look after the loss, not round 20
    assert [(x["metric"], x["side"], x["missing_from"]) for x in data["lost"]] == [
        ("ttft_ms", "B", 2)
    ]
    by_metric = {m["metric"]: m for m in data["metrics"]}
    assert by_metric["ttft_ms"]["verdict"] == "inconclusive"
    assert len(by_metric["ttft_ms"]["b"]) == 1  # its one pair, round 1
    assert data["verdict"] == "inconclusive" and data["exit_code"] == 1
    assert "verdict: inconclusive (exit 1)" in done.stdout
