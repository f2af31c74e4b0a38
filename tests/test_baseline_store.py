"""The baseline store and its pure parts: format 2 keyed by (GPU model, suite), doctored and
wrongly shaped records, NaN, golden records, confirmation by re-measuring, migration."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit.baseline import (
    FORMAT,
    BaselineSession,
    Store,
    check_golden,
    compare,
    compare_golden,
    confirm,
    fingerprint,
    format_number,
    judge,
)
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import catalog_gpu
from pytest_gpufit.hardware.records import Environment

H100 = "NVIDIA H100 80GB HBM3"


def _fp() -> Any:
    return fingerprint(catalog_gpu("h100-sxm"), Environment(driver_version="550.54.15"))


def _result(value: float = 100.0, outcome: str = "passed", suite: str = "a") -> dict[str, Any]:
    return {"suite": suite, "outcome": outcome, "metrics": {"decode_tok_s": value}}


def test_saving_suite_b_keeps_suite_a_accepted(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    a = store.write_run(_fp(), "a", {"a.yaml::t::throughput": _result()}, accept=True)
    b = store.write_run(_fp(), "b", {"b.yaml::t::throughput": _result(suite="b")}, accept=True)
    assert store.accepted(H100, "a")["id"] == a
    assert store.accepted(H100, "b")["id"] == b
    assert store.accepted(H100, "c") is None
    folder = tmp_path / "b" / "nvidia-h100-80gb-hbm3"
    assert (folder / "a" / "accepted").read_text().strip() == a
    assert json.loads((folder / "a" / "runs" / f"{a}.json").read_text())["format"] == FORMAT == 2


def test_store_round_trip_and_errors(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    run = store.write_run(_fp(), "a", {"x::y::z": _result(1.0)}, accept=True)
    assert not list((tmp_path / "b").rglob("*.tmp")), "atomic writes leave no temporary files"
    path = store.find(run)
    record = json.loads(path.read_text())
    record["format"] = FORMAT + 1
    path.write_text(json.dumps(record))
    with pytest.raises(GpufitError, match=f"has format {FORMAT + 1}, newer than"):
        store.accepted(H100, "a")
    path.write_text("{not json")
    with pytest.raises(GpufitError, match=f"{path} is unreadable or corrupt"):
        store.accepted(H100, "a")


def _doctor(store: Store, run: str, change: Any) -> Path:
    path = store.find(run)
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(results=[1, 2]), "'results' is list, expected a mapping"),
        (
            lambda r: r["results"]["x::y::z"]["metrics"].update(decode_tok_s="fast"),
            "decode_tok_s is 'fast', not a number",
        ),
        (lambda r: r.pop("id"), "'id' is missing or not a run id"),
        (lambda r: r.update(id="../../x"), "'id' is missing or not a run id"),
        (lambda r: r.update(fingerprint=None), "'fingerprint' is NoneType"),
        (lambda r: r["results"].update({"x::y::z": "fast"}), "x::y::z: expected a mapping"),
        (
            lambda r: r["results"]["x::y::z"]["metrics"].update(decode_tok_s=float("nan")),
            "decode_tok_s is nan; a NaN or infinite value can never be compared",
        ),
        (
            lambda r: r["results"]["x::y::z"]["metrics"].update(ttft_ms=float("inf")),
            "ttft_ms is inf",
        ),
        (
            lambda r: r["results"]["x::y::z"]["metrics"].update(decode_tok_s=10**400),
            "decode_tok_s is too large to be a measurement",
        ),
        (
            lambda r: r["results"]["x::y::z"]["metrics"].update(decode_tok_s=-1.0),
            "decode_tok_s is -1.0; a negative decode tok/s cannot be measured",
        ),
        (
            lambda r: r["results"]["x::y::z"]["metrics"].update(
                golden={"tokens": [], "top_ids": [], "top_logprobs": []}
            ),
            "golden tokens are empty",
        ),
    ],
)
def test_wrongly_shaped_records_are_one_error_naming_the_file(
    tmp_path: Path, change: Any, message: str
) -> None:
    store = Store(tmp_path / "b")
    run = store.write_run(_fp(), "a", {"x::y::z": _result()}, accept=True)
    path = _doctor(store, run, change)
    with pytest.raises(GpufitError, match="baseline record") as info:
        store.accepted(H100, "a")
    assert str(path) in str(info.value) and message in str(info.value)


def test_accepted_pointer_a_directory_or_not_utf8(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    store.write_run(_fp(), "a", {"x::y::z": _result()}, accept=True)
    pointer = tmp_path / "b" / "nvidia-h100-80gb-hbm3" / "a" / "accepted"
    pointer.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(GpufitError, match=f"baseline pointer {pointer} is unreadable"):
        store.accepted(H100, "a")
    pointer.unlink()
    pointer.mkdir()
    with pytest.raises(GpufitError, match=f"baseline pointer {pointer} is unreadable"):
        store.accepted(H100, "a")


@pytest.mark.parametrize("run_id", ["../../outside/x", "a/b", "*", "..", ""])
def test_run_ids_are_ids_not_paths(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(GpufitError, match="is not a run id"):
        Store(tmp_path / "b").find(run_id)


def test_accept_refuses_a_run_with_failed_checks_unless_forced(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    results = {"s::t::fits": _result(), "s::t::throughput": _result(outcome="failed")}
    run = store.write_run(_fp(), "a", results, accept=True)
    assert store.accepted(H100, "a") is None, "a run with failures is never accepted on save"
    with pytest.raises(GpufitError, match=r"1 failed check \(s::t::throughput\).*--force"):
        store.accept(run)
    files = store.accept(run, force=True)
    assert store.accepted(H100, "a")["id"] == run
    assert files == [store.find(run), store.find(run).parent.parent / "accepted"]


def test_session_save_records_every_check_and_accepts_only_clean_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    session = BaselineSession(store, Environment(), (catalog_gpu("h100-sxm"),), tmp_path)
    measurements = {
        "a.yaml::t::fits": {"gpu": H100, "suite": "a", "metrics": {}, "outcome": "passed"},
        "a.yaml::t::throughput": {
            "gpu": H100,
            "suite": "a",
            "metrics": {"decode_tok_s": 14.5},
            "outcome": "failed",
        },
        "b.yaml::t::fits": {"gpu": H100, "suite": "b", "metrics": {}, "outcome": "passed"},
    }
    saved = {run.suite: run for run in session.save(measurements, accept=True)}
    assert not saved["a"].accepted and saved["b"].accepted
    assert "NOT accepted: 1 failed check (a.yaml::t::throughput)" in saved["a"].message
    assert f"gpufit baseline accept {saved['a'].run_id} --force" in saved["a"].message
    assert saved["b"].message.endswith(f"saved and accepted for {H100}")
    record = store.read(store.find(saved["a"].run_id))
    assert record["results"]["a.yaml::t::throughput"]["outcome"] == "failed"
    assert record["results"]["a.yaml::t::throughput"]["metrics"] == {"decode_tok_s": 14.5}
    assert store.accepted(H100, "a") is None and store.accepted(H100, "b") is not None


def test_git_commit_is_read_once_per_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = subprocess.run

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting)
    session = BaselineSession(Store(tmp_path / "b"), Environment(), (), tmp_path)
    for _ in range(5):
        session.fingerprint(catalog_gpu("h100-sxm"))
    assert len(calls) == 1


# ---- unwritable, under a file, link loops ------------------------------------------------------


def test_folder_under_a_file_and_link_loop(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(GpufitError, match=f"baseline folder {tmp_path / 'file'} is a file"):
        Store(tmp_path / "file")
    with pytest.raises(GpufitError, match=rf"is under a file \({tmp_path / 'file'}\)"):
        Store(tmp_path / "file" / "store")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    with pytest.raises(GpufitError, match="is a symbolic link loop"):
        Store(tmp_path / "loop" / "store")


def test_failed_write_names_the_path_and_leaves_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "b")

    def refuse(src: Any, dst: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(GpufitError, match=r"cannot write baseline file .*: Permission denied"):
        store.write_run(_fp(), "a", {"x": _result()})
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_unwritable_folder_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(GpufitError, match=f"cannot create baseline folder {tmp_path / 'ro'}"):
        Store(tmp_path / "ro").write_run(_fp(), "a", {"x": _result()})


# ---- format 1 ----------------------------------------------------------------------------------


def _format1(root: Path) -> None:
    runs = root / "nvidia-h100-80gb-hbm3" / "runs"
    runs.mkdir(parents=True)
    record = {
        "format": 1,
        "id": "20250101T000000000000Z-abcdef",
        "created": 1.0,
        "fingerprint": _fp().to_dict(),
        "results": {
            "a.yaml::t::throughput": {"suite": "a", "metrics": {"decode_tok_s": 121.0}},
            "b.yaml::t::fits": {"suite": "b", "metrics": {}},
        },
    }
    (runs / "20250101T000000000000Z-abcdef.json").write_text(json.dumps(record))
    (root / "nvidia-h100-80gb-hbm3" / "accepted").write_text("20250101T000000000000Z-abcdef\n")


def test_format1_store_is_refused_with_the_migrate_command(tmp_path: Path) -> None:
    _format1(tmp_path / "b")
    store = Store(tmp_path / "b")
    with pytest.raises(GpufitError, match=r"format-1 store.*gpufit baseline migrate --dir "):
        store.accepted(H100, "a")
    lines = store.migrate()
    assert any(line.startswith("removed") for line in lines)
    assert store.legacy() == []
    a, b = store.accepted(H100, "a"), store.accepted(H100, "b")
    assert a["results"]["a.yaml::t::throughput"]["metrics"]["decode_tok_s"] == 121.0
    assert a["results"]["a.yaml::t::throughput"]["outcome"] == "passed"
    assert set(b["results"]) == {"b.yaml::t::fits"} and a["id"] != b["id"]


# ---- pure parts --------------------------------------------------------------------------------


def test_nan_or_inf_measured_is_an_error_never_a_pass() -> None:
    for bad in (float("nan"), float("inf"), -math.inf):
        with pytest.raises(GpufitError, match="never be compared"):
            compare({"decode_tok_s": 100}, {"decode_tok_s": bad}, {}, 0.05)
        with pytest.raises(GpufitError, match="never be compared"):
            compare({"decode_tok_s": bad}, {"decode_tok_s": 100}, {}, 0.05)


GOLDEN = {"tokens": [5, 7], "top_ids": [[5, 6], [7, 1]], "top_logprobs": [[-0.1, -2.5], [-0.3, -1]]}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"tokens": [], "top_ids": [], "top_logprobs": []}, "golden tokens are empty"),
        ({**GOLDEN, "top_ids": [[5, 6]]}, "golden has 2 tokens but 1 top_ids"),
        ({**GOLDEN, "top_logprobs": [[-0.1], [-0.3, -1]]}, "step 0: top_ids and top_logprobs"),
        ({**GOLDEN, "top_logprobs": [[math.nan, -2.5], [-0.3, -1]]}, "must be finite"),
    ],
)
def test_bad_golden_records_are_errors(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(GpufitError, match=message):
        check_golden(bad, "here")
    with pytest.raises(GpufitError, match=message):
        compare_golden(bad, GOLDEN, 0.1)


def test_confirmation_judges_the_median_of_all_runs() -> None:
    first = judge("decode_tok_s", 100.0, [10.0], 0.05)
    assert first.verdict == "worse"
    rescued = confirm(first, [100.0, 101.0])
    assert rescued.verdict == "ok" and rescued.new == 100.0 and len(rescued.runs) == 3
    held = confirm(first, [12.0, 100.0])
    assert held.verdict == "worse" and held.new == 12.0
    assert "(-88.0%, tolerance 5%; median of 3 runs, spread 750.0%)" in held.text()
    assert held.noisy() and "tighter than twice the measured spread" in (held.noisy() or "")
    assert judge("decode_tok_s", 100.0, [99.0, 100.0, 101.0], 0.05).noisy() is None


def test_the_checks_own_spread_is_reported_and_flags_a_tight_tolerance() -> None:
    (c,) = compare(
        {"decode_tok_s": 100}, {"decode_tok_s": 99, "decode_tok_s_spread": 0.04}, {}, 0.05
    )
    assert c.verdict == "ok" and "spread 4.0%" in c.text() and c.noisy()


def test_numbers_read_as_people_write_them() -> None:
    (c,) = compare({"decode_tok_s": 14230.4}, {"decode_tok_s": 1e6}, {}, 0.05)
    assert c.text().startswith("decode tok/s 14,230 -> 1,000,000 (")
    assert format_number(121.0) == "121" and format_number(14.5) == "14.5"


def test_a_linked_record_or_pointer_is_refused(tmp_path: Path) -> None:
    """A link in the committed store could make suite a's baseline suite b's weaker record, or a
    file outside the store, without the reviewed diff showing the content."""
    store = Store(tmp_path / "b")
    a = store.write_run(_fp(), "a", {"a.yaml::t::throughput": _result(100.0)}, accept=True)
    weak = tmp_path / "weak.json"
    record = store.find(a)
    data = json.loads(record.read_text())
    data["results"]["a.yaml::t::throughput"]["metrics"]["decode_tok_s"] = 1.0
    weak.write_text(json.dumps(data))
    record.unlink()
    record.symlink_to(weak)
    with pytest.raises(GpufitError, match=f"baseline record {record} is a symbolic link"):
        store.accepted(H100, "a")
    record.unlink()
    record.write_text(weak.read_text())
    pointer = record.parent.parent / "accepted"
    elsewhere = tmp_path / "pointer"
    elsewhere.write_text(a)
    pointer.unlink()
    pointer.symlink_to(elsewhere)
    with pytest.raises(GpufitError, match=f"baseline pointer {pointer} is a symbolic link"):
        store.accepted(H100, "a")


def test_a_record_copied_into_another_cards_or_suites_folder_is_refused(tmp_path: Path) -> None:
    """Links are refused, but a plain copy did the same: an H100 run copied into the H200's
    folder (and pointed at) became the H200's accepted baseline, so an H200 as slow as an H100
    passed. A linked suite folder reads another suite's records the same way."""
    import shutil

    store = Store(tmp_path / "b")
    h100 = store.write_run(_fp(), "a", {"a.yaml::t::throughput": _result(50.0)}, accept=True)
    h200 = dataclasses.replace(_fp(), gpu_name="NVIDIA H200")
    own = store.write_run(h200, "a", {"a.yaml::t::throughput": _result(100.0)}, accept=True)
    folder = store.suite_dir("NVIDIA H200", "a")
    shutil.copy(store.find(h100), folder / "runs" / f"{h100}.json")
    (folder / "accepted").write_text(h100)
    with pytest.raises(GpufitError, match="is a run of 'NVIDIA H100 80GB HBM3', suite 'a', in"):
        store.accepted("NVIDIA H200", "a")
    (folder / "accepted").write_text(own)
    assert store.accepted("NVIDIA H200", "a")["id"] == own
    # A suite folder linked to another suite's.
    store.write_run(_fp(), "b", {"b.yaml::t::throughput": _result(1.0)}, accept=True)
    linked = store.suite_dir(H100, "c")
    linked.symlink_to(store.suite_dir(H100, "b"), target_is_directory=True)
    with pytest.raises(GpufitError, match="suite 'b', in the folder of .*/c"):
        store.accepted(H100, "c")
