"""``gpufit baseline plot``: every run drawn, the accepted one marked, GPU and suite named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit.plot import panels, plot_runs


def _record(run_id: str, value: float, driver: str | None, suite: str = "s") -> dict[str, Any]:
    return {
        "id": run_id,
        "created": 1.0,  # three runs saved within one second
        "suite": suite,
        "fingerprint": {"gpu_name": "NVIDIA H100 80GB HBM3", "driver_version": driver},
        "results": {
            "s.yaml::t::throughput": {"outcome": "passed", "metrics": {"decode_tok_s": value}}
        },
    }


RECORDS = [
    (_record("20261127T043657000001Z-aaaaaa", 14230.0, "550.54.15"), False),
    (_record("20261127T043657000002Z-bbbbbb", 14100.0, "550.54.15"), True),
    (_record("20261127T043657000003Z-cccccc", 1_000_000.0, None), False),
]


def test_every_run_is_drawn_and_the_accepted_one_marked() -> None:
    (panel,) = panels(RECORDS)
    assert len(panel.runs) == 3 and len(set(panel.runs)) == 3
    assert [x for x, _ in panel.lines["s.yaml::t::throughput"]] == [0, 1, 2]
    assert panel.accepted == 1 and panel.runs[1].startswith("accepted\n")
    assert panel.title == "decode tok/s: NVIDIA H100 80GB HBM3, suite s"
    assert "no driver" in panel.runs[2] and "None" not in panel.runs[2]


def test_one_panel_per_suite() -> None:
    more = [*RECORDS, (_record("20261127T043658000000Z-dddddd", 1.0, None, suite="other"), True)]
    assert [(p.suite, len(p.runs)) for p in panels(more)] == [("other", 1), ("s", 3)]


def test_png_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = plot_runs(RECORDS, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
