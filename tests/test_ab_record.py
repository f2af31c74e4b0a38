"""gpufit ab --record: the A/B pair in the baseline store, as gpufit baseline diff says it."""

from __future__ import annotations

import json

import pytest

from pytest_gpufit.baseline import Store
from pytest_gpufit.baseline.fingerprint import Fingerprint
from pytest_gpufit.cli import main
from pytest_gpufit.errors import GpufitError


def _fp(torch: str) -> Fingerprint:
    return Fingerprint(
        "NVIDIA H100 80GB HBM3", 85e9, "550.54", "12.4", "12.4", torch, None, "3.12.1", None
    )


def _ab(old: Fingerprint, new: Fingerprint, verdict: str) -> dict:
    return {
        "schema": "gpufit-ab/1",
        "a": {"vars": {"python": "/old/bin/python"}, "fingerprint": old.to_dict()},
        "b": {"vars": {"python": "/new/bin/python"}, "fingerprint": new.to_dict()},
        "rounds": 14,
        "metrics": [],
        "verdict": verdict,
        "exit_code": 0,
    }


def test_diff_says_the_change_was_ab_tested_on_this_card(tmp_path, capsys):
    store = Store(tmp_path)
    results = {"s.yaml::t::throughput": {"outcome": "passed", "metrics": {"decode_tok_s": 10.0}}}
    old = store.write_run(_fp("2.5.1"), "s", results)
    new = store.write_run(_fp("2.6.0"), "s", results)
    path = store.write_ab(_ab(_fp("2.5.1"), _fp("2.6.0"), "same"))
    store.write_ab(_ab(_fp("2.4.0"), _fp("2.6.0"), "regressed"))  # another A: not this change
    assert path.parent.name == "_ab"
    assert main(["baseline", "--dir", str(tmp_path), "diff", old, new]) == 0
    out = capsys.readouterr().out
    assert "environment: torch 2.5.1 -> 2.6.0" in out
    lines = [line for line in out.splitlines() if "A/B-tested" in line]
    assert len(lines) == 1
    assert (
        "B (torch 2.5.1 -> 2.6.0) was A/B-tested against A on NVIDIA H100 80GB HBM3 on" in lines[0]
    )
    assert lines[0].endswith(": same after 14 rounds")
    # the pairs do not count as runs of a suite
    assert [r.run_id for r in store.runs()] == [old, new]


def test_a_corrupt_pair_is_an_error_naming_it(tmp_path):
    store = Store(tmp_path)
    path = store.write_ab(_ab(_fp("2.5.1"), _fp("2.6.0"), "same"))
    path.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(GpufitError, match=f"A/B record {path} is unreadable"):
        store.ab_records()


def test_plot_draws_each_metric_of_an_ab_result(tmp_path):
    pytest.importorskip("matplotlib")
    from pytest_gpufit.plot import plot_ab

    data = _ab(_fp("2.5.1"), _fp("2.6.0"), "regressed")
    data["metrics"] = [
        {
            "test": "s.yaml::t::throughput",
            "metric": "decode_tok_s",
            "a": [10.0, 10.2, 9.9],
            "b": [9.0, 9.1, 8.9],
            "ratio": 0.9,
            "low": 0.88,
            "high": 0.92,
            "verdict": "regressed",
        },
        {
            "test": "s.yaml::t::throughput",
            "metric": "ttft_ms",
            "a": [5.0, 5.1, 4.9],
            "b": [5.0, 5.0, 5.1],
            "ratio": 1.0,
            "low": None,
            "high": None,
            "verdict": "inconclusive",
        },
    ]
    out = plot_ab(data, tmp_path / "ab.png")
    assert out == tmp_path / "ab.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_logprobs_of_both_sides_are_compared_step_by_step():
    from pytest_gpufit.ab.run import Run, golden_agreement

    def golden(tokens, lp):
        return {
            "tokens": tokens,
            "top_ids": [[t, 99] for t in tokens],
            "top_logprobs": [[lp, -3.0] for _ in tokens],
        }

    a = Run("A", 1, 1.0, 0, {}, goldens={"t": golden([1, 2, 3, 4], -0.10)})
    same = Run("B", 1, 1.0, 0, {}, goldens={"t": golden([1, 2, 3, 4], -0.12)})
    diverges = Run("B", 2, 1.0, 0, {}, goldens={"t": golden([1, 2, 7, 4], -0.10)})
    (entry,) = golden_agreement([a, same, diverges])
    # 4 steps agree with the first B run; the second agrees on 2 and diverges at its 3rd
    assert entry["steps"] == 7 and entry["top1_agreement"] == pytest.approx(6 / 7)
    assert entry["max_logprob_diff"] == pytest.approx(0.02)
    assert 0 < entry["kl_topk_mean"] < 1e-3
