"""Baselines: save, compare, doctored records, environment changes, golden tokens, the store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny_checkpoint

from pytest_gpufit.baseline import (
    FORMAT,
    Store,
    compare,
    compare_golden,
    environment_changes,
    fingerprint,
    parse_tolerances,
)
from pytest_gpufit.cli import main as cli_main
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import catalog_gpu
from pytest_gpufit.hardware.records import Environment

# ---- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "old", "new", "verdict"),
    [
        ("decode_tok_s", 100, 94, "worse"),
        ("decode_tok_s", 100, 96, "ok"),
        ("decode_tok_s", 100, 106, "better"),
        ("ttft_ms", 100, 106, "worse"),
        ("ttft_ms", 100, 90, "better"),
        ("peak_allocated_bytes", 100, 104, "ok"),
        ("kl", 1e-6, 3e-6, "ok"),
        ("kl", 0.01, 0.02, "worse"),
    ],
)
def test_each_metric_is_judged_in_its_own_direction(
    metric: str, old: float, new: float, verdict: str
) -> None:
    (c,) = compare({metric: old}, {metric: new}, {}, 0.05)
    assert c.verdict == verdict


def test_per_metric_tolerance_overrides_the_default() -> None:
    (c,) = compare({"decode_tok_s": 100}, {"decode_tok_s": 85}, {"decode_tok_s": 0.2}, 0.05)
    assert c.verdict == "ok" and c.text() == "decode tok/s 100 -> 85 (-15.0%, tolerance 20%)"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"decode_tok_s": 5}, "expected a percentage"),
        ({"decode_tok_s": "5"}, "expected a percentage"),
        ({"speed": "5%"}, "unknown metric 'speed'; known: decode_tok_s"),
        ({"ttft_ms": "50000%"}, "expected a percentage"),
        ("5%", "expected a mapping"),
    ],
)
def test_bad_tolerances(raw: object, message: str) -> None:
    with pytest.raises(GpufitError, match=message):
        parse_tolerances(raw, "baseline.tolerance")


def test_environment_changes_read_like_an_upgrade() -> None:
    old = fingerprint(
        catalog_gpu("h100-sxm"), Environment(driver_version="550.54.15", torch_version="2.5.1")
    )
    new = fingerprint(
        catalog_gpu("h100-sxm"), Environment(driver_version="560.35.03", torch_version="2.6.0")
    )
    assert environment_changes(old.to_dict(), new.to_dict()) == [
        "driver 550.54.15 -> 560.35.03",
        "torch 2.5.1 -> 2.6.0",
    ]


GOLDEN = {
    "tokens": [5, 7, 9],
    "top_ids": [[5, 6], [7, 1], [9, 2]],
    "top_logprobs": [[-0.1, -2.5], [-0.3, -1.4], [-0.2, -3.0]],
}


def test_golden_identical_and_close() -> None:
    assert compare_golden(GOLDEN, GOLDEN, 0.1) is None
    near = json.loads(json.dumps(GOLDEN))
    near["top_logprobs"][1] = [-0.35, -1.4]
    assert compare_golden(GOLDEN, near, 0.1) is None


def test_golden_divergence_within_each_others_top_k_passes() -> None:
    swapped = json.loads(json.dumps(GOLDEN))
    swapped["tokens"][1] = 1
    swapped["top_ids"][1] = [1, 7]
    swapped["top_logprobs"][1] = [-0.32, -0.34]
    assert compare_golden(GOLDEN, swapped, 0.1) is None


def test_golden_failures() -> None:
    far = json.loads(json.dumps(GOLDEN))
    far["top_logprobs"][0] = [-0.9, -2.5]
    assert "step 0: token 5 log-probability -0.1000 -> -0.9000" in (
        compare_golden(GOLDEN, far, 0.1) or ""
    )
    other = json.loads(json.dumps(GOLDEN))
    other["tokens"][2] = 42
    other["top_ids"][2] = [42, 43]
    assert "not in each other's top-2" in (compare_golden(GOLDEN, other, 0.1) or "")


# ---- through pytest ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")  # the hf extra: only the tests that run a model
    return save_tiny_checkpoint(tmp_path_factory.mktemp("bl") / "tiny")


def _suite(pytester: pytest.Pytester, model: Path, tolerance: str = "10000%") -> None:
    # CPU timings on a shared 2-core machine swing by 10-20% run to run: these tests check the
    # mechanism with generous tolerances and doctored records, not the machine's stability.
    pytester.makefile(
        ".gpufit.yaml",
        bl=f"""
suite: bl
baseline: {{tolerance: {{decode_tok_s: {tolerance}}}}}
targets:
  - name: tiny
    model: {model}
    device: cpu
    checks:
      throughput: {{prompt_tokens: 8, new_tokens: 8, warmup: 1, repeats: 3}}
      precision: {{reference: golden, prompt_tokens: 8, new_tokens: 6}}
""",
    )


def _args(store: Path, mode: str) -> list[str]:
    return [
        "-p",
        "no:randomly",
        f"--gpufit-baseline={mode}",
        f"--gpufit-baseline-dir={store}",
        "--gpufit-baseline-tolerance=10000%",
    ]


def _accepted(store: Path, suite: str = "bl") -> Path:
    folder = store / "cpu" / suite
    return folder / "runs" / f"{(folder / 'accepted').read_text().strip()}.json"


def test_save_then_compare_passes(pytester: pytest.Pytester, tiny: Path) -> None:
    _suite(pytester, tiny)
    store = pytester.path / "store"
    result = pytester.runpytest(*_args(store, "save"))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["gpufit: baseline run * (2 checks) of suite bl saved and accepted for cpu"]
    )
    record = json.loads(_accepted(store).read_text())
    assert record["fingerprint"]["torch_version"] and record["format"] == FORMAT
    assert "golden" in record["results"]["bl.gpufit.yaml::tiny::precision"]["metrics"]
    result = pytester.runpytest(*_args(store, "compare"))
    result.assert_outcomes(passed=2)
    assert len(list((store / "cpu" / "bl" / "runs").glob("*.json"))) == 2, "compare records"


def test_no_baseline_in_compare_mode_fails(pytester: pytest.Pytester, tiny: Path) -> None:
    _suite(pytester, tiny)
    result = pytester.runpytest(*_args(pytester.path / "empty", "compare"))
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*no accepted baseline for cpu and suite bl in *: run once with --gpufit-baseline=save*"]
    )


def test_doctored_record_fails_naming_metric_tolerance_and_environment(
    pytester: pytest.Pytester, tiny: Path
) -> None:
    _suite(pytester, tiny, tolerance="20%")
    store = pytester.path / "store"
    pytester.runpytest(*_args(store, "save")).assert_outcomes(passed=2)
    path = _accepted(store)
    record = json.loads(path.read_text())
    metrics = record["results"]["bl.gpufit.yaml::tiny::throughput"]["metrics"]
    # Far beyond CPU run-to-run noise (which reaches 3x under load on a shared 2-core box).
    metrics["decode_tok_s"] *= 1000
    record["fingerprint"]["torch_version"] = "2.5.1"
    path.write_text(json.dumps(record))
    result = pytester.runpytest(*_args(store, "compare"))
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "tiny::throughput: torch 2.5.1 -> " in out
    # Confirmed by two more runs (confirm defaults to 2) before it fails.
    match = re.search(
        r"decode tok/s [\d.,]+ -> [\d.,]+ \((-[\d.]+)%, tolerance 20%; median of 3 runs", out
    )
    assert match and float(match.group(1)) < -20
    # The compare run records the failed check with its outcome and metrics (gpufit baseline
    # diff then shows the regression; accept refuses it without --force).
    newest = max((store / "cpu" / "bl" / "runs").glob("*.json"))
    entry = json.loads(newest.read_text())["results"]["bl.gpufit.yaml::tiny::throughput"]
    assert entry["outcome"] == "failed" and entry["metrics"]["decode_tok_s"] > 0
    assert cli_main(["baseline", "--dir", str(store), "accept", newest.stem]) == 2


def test_better_beyond_tolerance_passes_with_a_warning(
    pytester: pytest.Pytester, tiny: Path
) -> None:
    _suite(pytester, tiny, tolerance="20%")
    store = pytester.path / "store"
    pytester.runpytest(*_args(store, "save"))
    path = _accepted(store)
    record = json.loads(path.read_text())
    record["results"]["bl.gpufit.yaml::tiny::throughput"]["metrics"]["decode_tok_s"] /= 1000
    path.write_text(json.dumps(record))
    result = pytester.runpytest(*_args(store, "compare"))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*BaselineWarning*better than baseline*consider accepting*"])


def test_golden_fails_on_perturbed_weights(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    model = save_tiny_checkpoint(tmp_path / "m")
    _suite(pytester, model)
    store = pytester.path / "store"
    pytester.runpytest(*_args(store, "save")).assert_outcomes(passed=2)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(model / "model.safetensors"))
    for name, tensor in weights.items():
        if name.endswith("lm_head.weight"):
            weights[name] = tensor + 0.5 * tensor.abs().max() * (
                tensor.float().neg().sign().to(tensor.dtype)
            )
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    result = pytester.runpytest(*_args(store, "compare"))
    result.stdout.fnmatch_lines(
        ["*tiny::precision: no environment change: golden output differs from baseline *: step *"]
    )
    result.assert_outcomes(failed=1, passed=1)


def test_corrupt_store_is_an_error_naming_the_file(pytester: pytest.Pytester, tiny: Path) -> None:
    _suite(pytester, tiny)
    store = pytester.path / "store"
    pytester.runpytest(*_args(store, "save"))
    path = _accepted(store)
    path.write_text("{broken")
    result = pytester.runpytest(*_args(store, "compare"))
    result.assert_outcomes(failed=2)
    assert f"baseline record {path} is unreadable or corrupt" in result.stdout.str()


def test_baseline_dir_that_is_a_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".txt", store="x")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--gpufit-baseline=save", "--gpufit-baseline-dir=store.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*store.txt is a file; give a folder (--gpufit-baseline-dir*"])


def test_suite_tolerance_errors_are_collection_errors(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".gpufit.yaml",
        bad="""
suite: s
baseline: {tolerance: {decode_tok_s: 5}}
targets:
  - {name: t, model: qwen3-0.6b, weights: random, checks: {fits: {}}}
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*bad.gpufit.yaml:2: baseline.tolerance: "
            "baseline.tolerance.decode_tok_s: expected a percentage*"
        ]
    )


# The store's concurrency and the xdist merge do not depend on the check: an estimate (`fits`
# on a config alone) records figures as a model check does, with no torch in the sessions.
CONFIG = Path(__file__).parent.parent / "fixtures" / "tiny-llama"


def _fits(name: str) -> str:
    return (
        f"  - {{name: {name}, model: {CONFIG}, weights: random, device: cpu, "
        "checks: {fits: {}}}\n"
    )


def test_xdist_workers_leave_one_valid_record(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makefile(".gpufit.yaml", two="suite: two\ntargets:\n" + _fits("a") + _fits("b"))
    store = pytester.path / "store"
    result = pytester.runpytest_subprocess("-n", "2", *_args(store, "save"))
    result.assert_outcomes(passed=2)
    records = list((store / "cpu" / "two" / "runs").glob("*.json"))
    assert len(records) == 1
    data = json.loads(records[0].read_text())
    assert set(data["results"]) == {
        "two.gpufit.yaml::a::fits",
        "two.gpufit.yaml::b::fits",
    }
    assert all(r["metrics"]["estimate_total_bytes"] > 0 for r in data["results"].values())


def test_concurrent_sessions_leave_a_valid_store(pytester: pytest.Pytester) -> None:
    pytester.makefile(".gpufit.yaml", c="suite: c\ntargets:\n" + _fits("a"))
    store = pytester.path / "store"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *_args(store, "save"),
    ]
    runs = [
        subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.DEVNULL) for _ in range(3)
    ]
    assert [r.wait(timeout=300) for r in runs] == [0, 0, 0]
    assert len(list((store / "cpu" / "c" / "runs").glob("*.json"))) == 3
    assert Store(store).accepted("cpu", "c") is not None
    assert not list(store.rglob("*.tmp"))


def test_cli_list_show_accept_diff(
    pytester: pytest.Pytester, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _suite(pytester, tiny)
    store = pytester.path / "store"
    pytester.runpytest(*_args(store, "save"))
    pytester.runpytest(*_args(store, "compare"))
    capsys.readouterr()
    assert cli_main(["baseline", "--dir", str(store), "list"]) == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header == f"baselines in {store}:"
    assert len(lines) == 2 and lines[0].endswith("(accepted)")
    first, second = (line.split()[2] for line in lines)
    assert cli_main(["baseline", "--dir", str(store), "accept", second]) == 0
    assert Store(store).accepted("cpu", "bl")["id"] == second
    assert cli_main(["baseline", "--dir", str(store), "diff", first, second]) == 0
    out = capsys.readouterr().out
    assert "environment: no change" in out and "decode_tok_s" in out
    assert cli_main(["baseline", "--dir", str(store), "show", first]) == 0
    assert "bl.gpufit.yaml::tiny::throughput [passed]: decode_tok_s" in capsys.readouterr().out
    assert cli_main(["baseline", "--dir", str(store), "accept", "nope"]) == 2


def test_markdown_summary_and_github_step_summary(
    pytester: pytest.Pytester, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _suite(pytester, tiny)
    store = pytester.path / "store"
    pytester.runpytest(*_args(store, "save"))
    step = pytester.path / "step.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    pytester.runpytest(*_args(store, "compare"), "--gpufit-summary=summary.md")
    summary = (pytester.path / "summary.md").read_text()
    assert summary.startswith("## pytest-gpufit")
    assert "| bl::tiny | bf16 | cpu |" in summary
    assert "### Against the accepted baseline" in summary and "| decode_tok_s |" in summary
    assert step.read_text() == "earlier step\n" + summary


def test_plot(pytester: pytest.Pytester, tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    _suite(pytester, tiny)
    store = pytester.path / "store"
    pytester.runpytest(*_args(store, "save"))
    out = pytester.path / "plot.png"
    assert cli_main(["baseline", "--dir", str(store), "plot", "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pytest_benchmark_machine_info_carries_the_gpus(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pytest_benchmark")
    # When this suite itself runs under xdist, the inner run must not look like a worker.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile("""
        def test_b(benchmark):
            benchmark(sum, range(10))
    """)
    result = pytester.runpytest_subprocess(
        "--benchmark-json=bench.json", "--gpufit-simulate=2*h100-sxm"
    )
    result.assert_outcomes(passed=1)
    info = json.loads((pytester.path / "bench.json").read_text())["machine_info"]["gpufit"]
    assert info["source"] == "simulated" and len(info["gpus"]) == 2
