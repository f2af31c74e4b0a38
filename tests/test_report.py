"""Reports people read: the JSON report, the Markdown job summary, the terminal lines, and
what happens when an output cannot be written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit import atomic
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.records import Environment, Gpu, Inventory
from pytest_gpufit.numbers import format_number, plural
from pytest_gpufit.report import (
    TestResult,
    inventory_lines,
    markdown_summary,
    measurement_table,
    merge_results,
    result_from_report,
    summary_lines,
    write_markdown_summary,
    write_outputs,
    write_report,
)
from pytest_gpufit.requirements import Verdict

H100 = Gpu(0, "NVIDIA H100 80GB HBM3", 85520809984, compute_capability=(9, 0))
REAL = Inventory(
    gpus=(H100,),
    environment=Environment(driver_version="550.54", cuda_driver_version="12.4"),
)
SIMULATED = Inventory(
    gpus=(
        Gpu(0, "NVIDIA H100 80GB HBM3", 85520809984, catalog_id="h100-sxm", simulated=True),
        Gpu(1, "NVIDIA H100 80GB HBM3", 85520809984, catalog_id="h100-sxm", simulated=True),
    ),
    source="simulated",
)
VERDICTS = {"t.py::a": Verdict(True, "ok", (0,)), "t.py::b": Verdict(False, "needs 99 GB")}
RESULTS = [
    TestResult("t.py::a", "passed"),
    TestResult("t.py::b", "failed", "needs 99 GB of GPU memory; GPU0 has 85.5 GB"),
    TestResult("t.py::c", "error", "fixture 'model' not found"),
    TestResult("t.py::d", "skipped", "no GPU: NVML is not installed"),
    TestResult("t.py::e", "skipped", "no GPU: NVML is not installed"),
    TestResult("t.py::f", "skipped", "needs bf16"),
]
MEASURED = {
    "s.yaml::tiny::throughput": {
        "suite": "s",
        "target": "tiny",
        "check": "throughput",
        "dtype": "bf16",
        "device": "cuda:0",
        "metrics": {
            "prefill_tok_s": 1e6,
            "decode_tok_s": 14230.4,
            "decode_pct_of_ceiling": 45.26,
            "load_seconds": 0.0123,
            "ttft_ms": 12.5,
            "baseline": [
                {
                    "metric": "decode_tok_s",
                    "old": 14230.0,
                    "new": 1234.5,
                    "change": -0.91325,
                    "tolerance": 0.05,
                    "verdict": "worse",
                }
            ],
        },
    }
}


# ---- numbers and words -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e6, "1,000,000"),
        (14230.4, "14,230"),
        (1234, "1,234"),
        (12.5, "12.5"),
        (0.0123, "0.0123"),
        (0.5, "0.5"),
        (3.0, "3"),
        (-2500.0, "-2,500"),
        (1e-7, "0.0000001"),
    ],
)
def test_numbers_as_people_write_them(value: float, text: str) -> None:
    assert format_number(value) == text


def test_plurals() -> None:
    assert [plural(n, "gated test") for n in (0, 1, 2)] == [
        "0 gated tests",
        "1 gated test",
        "2 gated tests",
    ]
    assert plural(1, "GPU") == "1 GPU" and plural(2, "GPU") == "2 GPUs"


def test_summary_lines_say_one_gated_test() -> None:
    lines = summary_lines(REAL, {"t.py::a": Verdict(True, "ok", (0,))})
    assert lines[0] == "gpufit: 1 of 1 gated test ran"
    assert lines[1] == "  GPU0 NVIDIA H100 80GB HBM3: 1 gated test ran here"
    two = summary_lines(SIMULATED, VERDICTS)
    assert two[0] == "gpufit: 1 of 2 gated tests would run (simulated)"
    assert "  GPU1 h100-sxm: 0 gated tests would run here" in two


def test_missing_versions_read_no_driver() -> None:
    bare = Inventory(gpus=(H100,))
    assert inventory_lines(bare) == [
        "GPU0 NVIDIA H100 80GB HBM3, 85.5 GB (79.6 GiB), CC 9.0, no driver, no CUDA"
    ]
    text = markdown_summary(bare, {}, {})
    assert "no driver, no CUDA, no torch" in text
    assert "None" not in text and "driver -" not in text
    assert "driver 550.54, CUDA 12.4, no torch" in markdown_summary(REAL, {}, {})


# ---- the Markdown summary -------------------------------------------------------------------


def test_summary_says_simulated_at_the_top() -> None:
    text = markdown_summary(SIMULATED, VERDICTS, {}, RESULTS)
    head = text.splitlines()[:3]
    assert any("Simulated: no real GPU was used" in line for line in head), head
    assert "h100-sxm, h100-sxm" in text
    assert "- 1 of 2 gated tests had what they need (simulated)" in text
    assert "Simulated" not in markdown_summary(REAL, VERDICTS, {}, RESULTS)


def test_summary_lists_failures_and_grouped_skip_reasons() -> None:
    text = markdown_summary(REAL, VERDICTS, {}, RESULTS)
    assert "- tests: 1 passed, 1 failed, 1 error, 3 skipped" in text
    assert "### Failed (2)" in text
    assert "- `t.py::b`: needs 99 GB of GPU memory; GPU0 has 85.5 GB" in text
    assert "- `t.py::c`: error: fixture 'model' not found" in text
    assert "### Skipped (3)" in text
    skips = text[text.index("### Skipped") :].splitlines()
    assert skips[2:4] == ["- 2 tests: no GPU: NVML is not installed", "- 1 test: needs bf16"]


def test_summary_escapes_markdown_in_reasons() -> None:
    results = [TestResult("t.py::x[a|b]", "failed", "expected <tensor> | got\nmore")]
    text = markdown_summary(REAL, {}, {}, results)
    assert "- `t.py::x[a|b]`: expected &lt;tensor&gt; \\| got more" in text


def test_long_lists_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    results = [TestResult(f"t.py::t{i}", "failed", "boom") for i in range(53)]
    text = markdown_summary(REAL, {}, {}, results)
    assert "- and 3 more failures" in text and "t.py::t49" in text and "t.py::t50" not in text


def test_numbers_in_tables_are_written_out() -> None:
    table = "\n".join(measurement_table(MEASURED))
    assert "1,000,000" in table and "14,230 (45.3%)" in table
    assert "0.0123" in table and "12.5" in table and "e+" not in table
    text = markdown_summary(REAL, {}, MEASURED)
    assert "| s::tiny | bf16 | cuda:0 |" in text and "| 1,000,000 |" in text
    assert "| decode_tok_s | 14,230 | 1,234 | -91.3% | 5% | worse |" in text
    assert "e+" not in text


# ---- results from real pytest reports -------------------------------------------------------


def test_results_from_a_real_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_gpufit import requires_vram

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture broke")

        def test_pass(): pass
        def test_fail(): assert 1 == 2, "one is not two"
        def test_error(broken): pass
        @pytest.mark.skip(reason="not today")
        def test_skip(): pass
        @pytest.mark.xfail(reason="known bug")
        def test_xfail(): assert False
        @requires_vram(1000)
        def test_big(): pass
        """
    )
    rec = pytester.inline_run("--gpufit-simulate=h100-sxm", "-p", "no:randomly")
    results: dict[str, TestResult] = {}
    for report in rec.getreports("pytest_runtest_logreport"):
        result = result_from_report(report)
        if result is not None:
            results[report.nodeid] = merge_results(results.get(report.nodeid), result)
    by_name = {nodeid.split("::")[1]: r for nodeid, r in results.items()}
    assert {n: r.outcome for n, r in by_name.items()} == {
        "test_pass": "passed",
        "test_fail": "failed",
        "test_error": "error",
        "test_skip": "skipped",
        "test_xfail": "skipped",
        "test_big": "skipped",
    }
    assert by_name["test_fail"].reason == "AssertionError: one is not two"
    assert by_name["test_error"].reason == "RuntimeError: fixture broke"
    assert by_name["test_skip"].reason == "not today"
    assert by_name["test_xfail"].reason == "xfail: known bug"
    assert "needs 1000 GB of GPU memory" in by_name["test_big"].reason
    text = markdown_summary(SIMULATED, {}, {}, list(results.values()))
    assert "AssertionError: one is not two" in text and "- 1 test: not today" in text


def test_a_teardown_error_does_not_hide_the_failure() -> None:
    failed = TestResult("t", "failed", "assert 1 == 2")
    assert merge_results(failed, TestResult("t", "error", "teardown")) == failed
    assert merge_results(TestResult("t", "passed"), TestResult("t", "error", "td")).outcome == (
        "error"
    )


# ---- the JSON report ------------------------------------------------------------------------


def test_json_report_holds_results(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "r.json"
    write_report(path, REAL, VERDICTS, MEASURED, RESULTS)
    data = json.loads(path.read_text())
    assert data["results"]["t.py::b"] == {
        "outcome": "failed",
        "reason": "needs 99 GB of GPU memory; GPU0 has 85.5 GB",
    }
    assert data["verdicts"]["t.py::a"]["ok"] is True
    assert data["inventory"]["environment"]["driver_version"] == "550.54"
    assert os.listdir(path.parent) == ["r.json"]


# ---- outputs that cannot be written ---------------------------------------------------------


def _write(**paths: Any) -> list[str]:
    return write_outputs(REAL, VERDICTS, MEASURED, RESULTS, **paths)


def test_missing_parent_folders_are_created(tmp_path: Path) -> None:
    report, summary = tmp_path / "a" / "b" / "r.json", tmp_path / "c" / "s.md"
    assert _write(report_path=report, summary_path=summary) == []
    assert json.loads(report.read_text())["results"]
    assert summary.read_text().startswith("## pytest-gpufit")


def test_directory_targets_fail_with_the_path_and_leave_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    errors = _write(report_path=folder, summary_path=folder, step_summary=folder)
    assert errors == [
        f"gpufit: cannot write the JSON report (--gpufit-report) {folder}: Is a directory",
        f"gpufit: cannot write the Markdown summary (--gpufit-summary) {folder}: Is a directory",
        f"gpufit: cannot write the job summary GITHUB_STEP_SUMMARY {folder}: Is a directory",
    ]
    assert list(tmp_path.rglob("*")) == [folder]


def test_every_writable_output_is_written_before_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "somefile").write_text("x")
    step = tmp_path / "step.md"
    step.write_text("earlier step\n")
    errors = _write(report_path="somefile/r.json", summary_path="s.md", step_summary=step)
    absolute = tmp_path / "somefile" / "r.json"
    assert errors == [
        f"gpufit: cannot write the JSON report (--gpufit-report) {absolute}: "
        f"{tmp_path / 'somefile'} is a file, not a folder"
    ]
    summary = (tmp_path / "s.md").read_text()
    assert "### Failed (2)" in summary
    assert step.read_text() == "earlier step\n" + summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.md", "somefile", "step.md"]


def test_unwritable_step_summary_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    step = tmp_path / "file" / "summary.md"
    summary = tmp_path / "s.md"
    errors = _write(summary_path=summary, step_summary=str(step))
    assert len(errors) == 1 and errors[0].startswith(
        f"gpufit: cannot write the job summary GITHUB_STEP_SUMMARY {step}: "
    )
    assert "is a file, not a folder" in errors[0]
    assert summary.exists()


def test_a_failed_replace_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an unwritable (chmod) target does, reproduced where tests run as root."""

    def refuse(src: Any, dst: Any) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(atomic.os, "replace", refuse)
    path = tmp_path / "r.json"
    errors = _write(report_path=path, summary_path=tmp_path / "s.md")
    assert errors == [
        f"gpufit: cannot write the JSON report (--gpufit-report) {path}: Permission denied",
        f"gpufit: cannot write the Markdown summary (--gpufit-summary) {tmp_path / 's.md'}: "
        "Permission denied",
    ]
    assert list(tmp_path.iterdir()) == []


def test_write_markdown_summary_writes_both_then_names_the_failure(tmp_path: Path) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    step = tmp_path / "step.md"
    with pytest.raises(GpufitError, match="--gpufit-summary.*Is a directory"):
        write_markdown_summary(REAL, VERDICTS, {}, str(folder), str(step), RESULTS)
    assert "### Skipped (3)" in step.read_text()


def test_a_plain_test_that_records_only_its_metrics_gets_a_row(pytester: pytest.Pytester) -> None:
    """docs/ab.md: a plain test gives gpufit ab a metric with the gpufit_measurement property;
    one with its metrics alone was a KeyError ('suite') in the terminal summary."""
    pytester.makepyfile(
        test_m="""
        import json

        def test_speed(record_property):
            record_property("gpufit_measurement", json.dumps({"metrics": {"decode_tok_s": 123.0}}))
        """
    )
    result = pytester.runpytest("-p", "no:randomly", "--gpufit-report=r.json")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["test_m.py::test_speed  -  *-  *123 *"])
    data = json.loads((pytester.path / "r.json").read_text())
    assert data["measurements"]["test_m.py::test_speed"]["metrics"] == {"decode_tok_s": 123.0}
