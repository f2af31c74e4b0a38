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
