"""Baselines through pytest and the ``gpufit baseline`` console script, with estimate-only
suites (no torch): per-suite accepted runs, missing checks, failed runs, confirmation, settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GPUFIT = shutil.which("gpufit") or str(Path(sys.executable).parent / "gpufit")


def _suite(pytester: pytest.Pytester, name: str, targets: str, baseline: str = "") -> None:
    pytester.makefile(
        ".gpufit.yaml",
        **{name: f"suite: {name}\n{baseline}\ntargets:\n{targets}"},
    )


FITS = "  - {name: t, model: qwen3-0.6b, weights: random, device: cpu, checks: {fits: {}}}\n"
# DeepSeek-V3 in bf16 needs ~1.3 TB: its fits check fails on any machine's system memory.
TOO_BIG = "  - {name: big, model: deepseek-v3, weights: random, device: cpu, checks: {fits: {}}}\n"


def _args(mode: str) -> list[str]:
    return ["-p", "no:randomly", f"--gpufit-baseline={mode}", "--gpufit-baseline-dir=store"]


def _cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPUFIT_")}
    return subprocess.run(
        [GPUFIT, "baseline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
    )


def test_saving_one_suite_keeps_the_other_suites_baseline(pytester: pytest.Pytester) -> None:
    _suite(pytester, "a", FITS)
    _suite(pytester, "b", FITS)
    pytester.runpytest(*_args("save")).assert_outcomes(passed=2)
    pytester.runpytest("b.gpufit.yaml", *_args("save")).assert_outcomes(passed=1)
    result = pytester.runpytest("a.gpufit.yaml", *_args("compare"), "-W", "error")
    result.assert_outcomes(passed=1)
    accepted = sorted(p.parent.name for p in (pytester.path / "store").rglob("accepted"))
    assert accepted == ["a", "b"]


def test_a_check_missing_from_the_baseline_fails_or_warns_when_asked(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester, "s", FITS)
    pytester.runpytest(*_args("save")).assert_outcomes(passed=1)
    _suite(pytester, "s", FITS + FITS.replace("name: t", "name: u"))
    result = pytester.runpytest(*_args("compare"))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*s.gpufit.yaml::u::fits is not in baseline run *; save a new baseline*"
            "or set baseline: {missing: warn}*"
        ]
    )
    _suite(pytester, "s", FITS + FITS.replace("name: t", "name: u"), "baseline: {missing: warn}")
    result = pytester.runpytest(*_args("compare"))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*BaselineWarning*u::fits is not in baseline run*"])
    result.stdout.fnmatch_lines(["*s.gpufit.yaml:*: BaselineWarning*"])  # at the suite's line
    # Already set: the warning does not tell the user to set it.
    assert "or set baseline: {missing: warn}" not in result.stdout.str()


def test_save_with_a_failed_check_records_but_does_not_accept(pytester: pytest.Pytester) -> None:
    _suite(pytester, "s", FITS + TOO_BIG)
    result = pytester.runpytest(*_args("save"))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "gpufit: baseline run * (2 checks) of suite s saved for cpu but NOT accepted: "
            "1 failed check (s.gpufit.yaml::big::fits)*--force*"
        ]
    )
    assert not list((pytester.path / "store").rglob("accepted"))
    (record,) = (pytester.path / "store").rglob("*.json")
    data = json.loads(record.read_text())
    assert data["results"]["s.gpufit.yaml::big::fits"]["outcome"] == "failed"
    refused = _cli(pytester.path, "--dir", "store", "accept", record.stem)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "1 failed check (s.gpufit.yaml::big::fits)" in refused.stderr
    forced = _cli(pytester.path, "--dir", "store", "accept", record.stem, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "files to commit:" in forced.stdout
    assert f"  {pytester.path / 'store'}" in forced.stdout, "paths printed are absolute"


@pytest.mark.parametrize(
    "subset", [["-k", "not other"], ["--deselect", "s.gpufit.yaml::other::fits"]]
)
def test_a_save_of_part_of_a_suite_is_not_accepted(
    pytester: pytest.Pytester, subset: list[str]
) -> None:
    two = FITS + FITS.replace("name: t", "name: other")
    _suite(pytester, "s", two)
    pytester.runpytest(*_args("save")).assert_outcomes(passed=2)
    (accepted,) = (pytester.path / "store").rglob("accepted")
    before = accepted.read_text()
    # A shard (-k / --deselect) must not replace the whole suite's accepted baseline.
    result = pytester.runpytest(*_args("save"), *subset)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*suite s saved for cpu but NOT accepted: 1 check of the suite did not run*other::fits*"]
    )
    assert accepted.read_text() == before
    pytester.runpytest(*_args("compare")).assert_outcomes(passed=2)


def test_compare_records_failed_checks_and_diff_shows_the_regression(
    pytester: pytest.Pytester,
) -> None:
    from pytest_gpufit.baseline import Store, fingerprint
    from pytest_gpufit.hardware.records import Environment

    store = Store(pytester.path / "store")
    fp = fingerprint(None, Environment())
    nodeid = "s.gpufit.yaml::t::throughput"
    old = store.write_run(
        fp, "s", {nodeid: {"outcome": "passed", "metrics": {"decode_tok_s": 121.0}}}, True
    )
    new = store.write_run(
        fp, "s", {nodeid: {"outcome": "failed", "metrics": {"decode_tok_s": 14.5}}}, True
    )
    out = _cli(pytester.path, "--dir", "store", "diff", old, new)
    assert out.returncode == 0, out.stderr
    (row,) = [line.split() for line in out.stdout.splitlines() if "decode_tok_s" in line]
    assert row == [nodeid, "decode_tok_s", "121", "14.5", "-88.0%", "worse"]
    assert f"outcome passed -> failed: {nodeid}" in out.stdout
    # A report by default; with --exit-code a script can stop on it, and not on a run that held.
    assert _cli(pytester.path, "--dir", "store", "diff", old, new, "--exit-code").returncode == 1
    same = _cli(pytester.path, "--dir", "store", "diff", old, old, "--exit-code")
    assert same.returncode == 0, same.stdout
    # A run that no longer measures a metric is not a run that held it.
    lost = store.write_run(
        fp, "s", {nodeid: {"outcome": "passed", "metrics": {"prefill_tok_s": 1.0}}}, True
    )
    out = _cli(pytester.path, "--dir", "store", "diff", old, lost, "--exit-code")
    assert out.returncode == 1, out.stdout
    (row,) = [line.split() for line in out.stdout.splitlines() if "decode_tok_s" in line]
    assert row == [nodeid, "decode_tok_s", "121", "-", "missing"]


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(results=[1]),
        lambda r: r.pop("id"),
        lambda r: r["results"]["s.gpufit.yaml::t::fits"]["metrics"].update(kl="low"),
    ],
)
def test_wrongly_shaped_record_is_one_error_in_pytest_and_in_the_cli(
    pytester: pytest.Pytester, change: object
) -> None:
    _suite(pytester, "s", FITS)
    pytester.runpytest(*_args("save")).assert_outcomes(passed=1)
    (path,) = (pytester.path / "store").rglob("*.json")
    record = json.loads(path.read_text())
    change(record)  # type: ignore[operator]
    path.write_text(json.dumps(record))
    result = pytester.runpytest(*_args("compare"))
    result.assert_outcomes(failed=1)
    assert f"baseline record {path}" in result.stdout.str()
    assert "Traceback" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()
    for verb in (["show", path.stem], ["accept", path.stem], ["plot", "--output", "x.png"]):
        out = _cli(pytester.path, "--dir", "store", *verb)
        assert out.returncode == 2, (verb, out.stdout, out.stderr)
        assert f"baseline record {path}" in out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_accepted_pointer_a_directory_or_not_utf8_fails_in_pytest(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester, "s", FITS)
    pytester.runpytest(*_args("save")).assert_outcomes(passed=1)
    (pointer,) = (pytester.path / "store").rglob("accepted")
    pointer.write_bytes(b"\xff\xfe")
    result = pytester.runpytest(*_args("compare"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*baseline pointer {pointer} is unreadable*"])
    pointer.unlink()
    pointer.mkdir()
    out = _cli(pytester.path, "--dir", "store", "list")
    assert out.returncode == 2 and f"baseline pointer {pointer} is unreadable" in out.stderr


def test_show_refuses_a_path_as_run_id(pytester: pytest.Pytester) -> None:
    outside = pytester.path / "outside"
    outside.mkdir()
    (outside / "x.json").write_text("{}")
    out = _cli(pytester.path / "outside", "--dir", "../store/a/b", "show", "../../outside/x")
    assert out.returncode == 2 and "'../../outside/x' is not a run id" in out.stderr


@pytest.mark.parametrize(
    ("make", "bad"),
    [
        (lambda p: (p / "store").write_text("x"), "store is a file"),
        (lambda p: (p / "f").write_text("x"), "is under a file"),
        (lambda p: os.symlink(p / "store", p / "store"), "is a symbolic link loop"),
    ],
)
def test_unusable_baseline_folder_is_one_message(
    pytester: pytest.Pytester, make: object, bad: str
) -> None:
    make(pytester.path)  # type: ignore[operator]
    folder = "f/store" if bad == "is under a file" else "store"
    _suite(pytester, "s", FITS)
    result = pytester.runpytest("--gpufit-baseline=save", f"--gpufit-baseline-dir={folder}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert bad in result.stderr.str() and str(pytester.path) in result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    out = _cli(pytester.path, "--dir", folder, "list")
    assert out.returncode == 2 and bad in out.stderr and "Traceback" not in out.stderr
    assert not list(pytester.path.rglob("*.tmp"))


def test_format1_store_is_refused_then_migrated(pytester: pytest.Pytester) -> None:
    _suite(pytester, "s", FITS)
    runs = pytester.path / "store" / "cpu" / "runs"
    runs.mkdir(parents=True)
    run = "20250101T000000000000Z-abcdef"
    (runs / f"{run}.json").write_text(
        json.dumps(
            {
                "format": 1,
                "id": run,
                "created": 1.0,
                "fingerprint": {"gpu_name": "cpu"},
                "results": {"s.gpufit.yaml::t::fits": {"suite": "s", "metrics": {}}},
            }
        )
    )
    (runs.parent / "accepted").write_text(run + "\n")
    result = pytester.runpytest(*_args("compare"))
    assert result.ret != 0
    output = result.stdout.str() + result.stderr.str()
    assert "s.gpufit.yaml F" in output and "Traceback" not in output
    assert (
        f"format-1 store (one accepted run per GPU model, e.g. {runs.parent / 'accepted'})"
        in output
    )
    assert f"run `gpufit baseline migrate --dir {pytester.path / 'store'}`" in output
    # The command exactly as the message prints it (--dir after the verb) works.
    out = _cli(pytester.path, "migrate", "--dir", str(pytester.path / "store"))
    assert out.returncode == 0, out.stderr
    # A format-1 record kept no check parameters: compared only where the suite allows a
    # baseline that lacks something (issue 18.9), else a failure asking for a new baseline.
    result = pytester.runpytest(*_args("compare"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*was saved before gpufit kept each check's parameters*"])
    _suite(pytester, "s", FITS, "baseline: {missing: warn}")
    pytester.runpytest(*_args("compare")).assert_outcomes(passed=1)


# ---- the command honours the plugin's settings ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("pytest.ini", "[pytest]\ngpufit_baseline_dir = from-ini\n"),
        ("pyproject.toml", '[tool.pytest.ini_options]\ngpufit_baseline_dir = "from-ini"\n'),
        ("tox.ini", "[pytest]\ngpufit_baseline_dir = from-ini\n"),
        ("setup.cfg", "[tool:pytest]\ngpufit_baseline_dir = from-ini\n"),
    ],
)
def test_cli_finds_the_ini_upward_and_reads_relative_to_its_rootdir(
    pytester: pytest.Pytester, name: str, text: str
) -> None:
    (pytester.path / name).write_text(text)
    _suite(pytester, "s", FITS)
    pytester.runpytest("-p", "no:randomly", "--gpufit-baseline=save").assert_outcomes(passed=1)
    assert list((pytester.path / "from-ini").rglob("accepted"))
    sub = pytester.path / "sub" / "dir"
    sub.mkdir(parents=True)
    out = _cli(sub, "list")
    assert out.returncode == 0, out.stderr
    assert f"baselines in {pytester.path / 'from-ini'}:" in out.stdout
    out = _cli(sub, "list", env={"GPUFIT_BASELINE_DIR": "from-env"})
    assert f"no baseline runs in {pytester.path / 'from-env'}" in out.stdout
    out = _cli(sub, "--dir", "here", "list", env={"GPUFIT_BASELINE_DIR": "from-env"})
    assert f"no baseline runs in {sub / 'here'}" in out.stdout


def test_cli_default_is_the_rootdirs_gpufit_baselines(pytester: pytest.Pytester) -> None:
    (pytester.path / "pytest.ini").write_text("[pytest]\n")
    (pytester.path / "sub").mkdir()
    out = _cli(pytester.path / "sub", "list")
    assert out.stdout.strip() == f"no baseline runs in {pytester.path / '.gpufit' / 'baselines'}"


def test_cli_bad_setting_names_its_source(pytester: pytest.Pytester) -> None:
    (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options\n")
    out = _cli(pytester.path, "list")
    assert out.returncode == 2 and "pyproject.toml: cannot read" in out.stderr


# ---- confirmation by re-measuring ---------------------------------------------------------------

FAKE = """
import pytest
from pytest_gpufit.suites import checks

VALUES = iter([])

def fake(ctx, params):
    ctx.metrics["decode_tok_s"] = next(VALUES)

REAL = checks.RUNNERS["fits"]

# Suite items take no fixtures: swap the runner for this session only. The saved baseline
# measures 100; the compared session measures the given sequence.
def pytest_configure(config):
    global VALUES
    save = config.getoption("gpufit_baseline") == "save"
    VALUES = iter([100.0] if save else [{values}])
    checks.RUNNERS["fits"] = fake

def pytest_unconfigure(config):
    checks.RUNNERS["fits"] = REAL
"""


def _confirm_case(pytester: pytest.Pytester, values: str, confirm: int = 2) -> pytest.RunResult:
    _suite(pytester, "s", FITS, f"baseline: {{confirm: {confirm}}}")
    pytester.makeconftest(FAKE.format(values=values))
    # In a subprocess each: pytester's in-process runs keep the first run's conftest module.
    pytester.runpytest_subprocess(*_args("save")).assert_outcomes(passed=1)
    return pytester.runpytest_subprocess(*_args("compare"))


def test_a_one_off_slow_run_is_confirmed_away(pytester: pytest.Pytester) -> None:
    result = _confirm_case(pytester, "10.0, 100.0, 101.0")
    result.assert_outcomes(passed=1)


def test_a_confirmed_regression_fails_with_runs_and_spread(pytester: pytest.Pytester) -> None:
    result = _confirm_case(pytester, "10.0, 12.0, 11.0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*decode tok/s 100 -> 11 (-89.0%, tolerance 5%; median of 3 runs, spread 18.2%)*"]
    )
    result.stdout.fnmatch_lines(["*BaselineWarning*tighter than twice the measured spread*"])


def test_confirm_zero_fails_at_once(pytester: pytest.Pytester) -> None:
    _confirm_case(pytester, "10.0", confirm=0).assert_outcomes(failed=1)


def test_confirmation_remeasures_on_the_judged_gpu(pytester: pytest.Pytester) -> None:
    """GPU0 is a 24 GB RTX 4090, GPU1 an H100; the suite needs 70 GB, so GPU1 is judged and
    measured. Re-measuring on cuda:0 would judge a regression on another card."""
    from fake_probe import nvml_probe

    big = FITS.replace("device: cpu", "device: cuda")
    _suite(pytester, "s", big, "requires: {vram: 70GB}\nbaseline: {confirm: 2}")
    devices = pytester.path / "devices.txt"
    pytester.makeconftest(
        nvml_probe("[FakeCard(**RTX_4090), FakeCard()]")
        + FAKE.format(values="10.0, 100.0, 101.0").replace(
            "    ctx.metrics[",
            f"    open({str(devices)!r}, 'a').write(ctx.target.device + ' ')\n    ctx.metrics[",
        )
    )
    pytester.runpytest_subprocess(*_args("save")).assert_outcomes(passed=1)
    pytester.runpytest_subprocess(*_args("compare")).assert_outcomes(passed=1)
    assert devices.read_text().split() == ["cuda:1"] * 4


def test_bad_baseline_keys_are_collection_errors(pytester: pytest.Pytester) -> None:
    _suite(pytester, "s", FITS, "baseline: {confirm: -1, missing: maybe}")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*s.gpufit.yaml:2: baseline.missing: *expected fail or warn*"])


@pytest.mark.parametrize("mode", ["save", "compare"])
def test_a_simulated_run_never_writes_or_judges_baselines(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A simulated save wrote and accepted catalog estimates as the real H100's baseline of
    the suite, replacing the accepted run its gate compares against."""
    _suite(pytester, "s", FITS.replace("device: cpu", "device: cuda"))
    monkeypatch.setenv("GPUFIT_SIMULATE", "h100-sxm")
    result = pytester.runpytest_subprocess(*_args(mode))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: baseline={mode} (from --gpufit-baseline) and simulate='h100-sxm' "
            "(from GPUFIT_SIMULATE) cannot be combined*"
        ]
    )
    assert "Traceback" not in result.stderr.str()
    assert not (pytester.path / "store").exists()


GOLDEN_FAKE = """
from pytest_gpufit.suites import checks

def fake(ctx, params):  # what run_golden records, without a model
    ctx.metrics["golden"] = {"tokens": [1], "top_ids": [[1, 2]], "top_logprobs": [[-0.1, -2.0]]}

REAL = checks.RUNNERS["precision"]

def pytest_configure(config):
    checks.RUNNERS["precision"] = fake

def pytest_unconfigure(config):
    checks.RUNNERS["precision"] = REAL
"""


@pytest.mark.parametrize(("policy", "outcome"), [("fail", "failed"), ("skip", "skipped")])
def test_a_golden_check_without_baselines_is_not_a_pass(
    pytester: pytest.Pytester, policy: str, outcome: str
) -> None:
    """Golden tokens are judged only against an accepted baseline: with baselines off the
    check recorded them, compared nothing, and passed under the fail policy."""
    golden = FITS.replace("fits: {}", "precision: {reference: golden, new_tokens: 1, top_k: 2}")
    _suite(pytester, "g", golden)
    pytester.makeconftest(GOLDEN_FAKE)
    result = pytester.runpytest_subprocess(f"--gpufit-on-missing={policy}", "-rs")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(
        ["*reference: golden is judged against the accepted baseline, and baselines are off*"]
    )
    # Saving records the reference, and comparing against it passes.
    pytester.runpytest_subprocess(*_args("save")).assert_outcomes(passed=1)
    pytester.runpytest_subprocess(*_args("compare")).assert_outcomes(passed=1)


def test_a_tolerance_that_can_never_fail_says_so(pytester: pytest.Pytester) -> None:
    """decode tok/s 100 -> 1 passed in silence under a 10000% tolerance (from a suite, or a
    leaked GPUFIT_BASELINE_TOLERANCE): a rate cannot fall by more than 100%."""
    _suite(pytester, "s", FITS, "baseline: {tolerance: {decode_tok_s: 10000%}}")
    pytester.makeconftest(FAKE.format(values="1.0, 1.0, 1.0"))
    pytester.runpytest_subprocess(*_args("save")).assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess(*_args("compare"))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*BaselineWarning: decode tok/s: tolerance 10000% can never fail*100 -> 1 passed*"]
    )


LOSES_A_METRIC = """
from pytest_gpufit.suites import checks

REAL = checks.RUNNERS["fits"]

def fake(ctx, params):
    ctx.metrics["decode_tok_s"] = 100.0
    if SAVE:
        ctx.metrics["prefill_tok_s"] = 5000.0

def pytest_configure(config):
    global SAVE
    SAVE = config.getoption("gpufit_baseline") == "save"
    checks.RUNNERS["fits"] = fake

def pytest_unconfigure(config):
    checks.RUNNERS["fits"] = REAL
"""


@pytest.mark.parametrize("missing", ["fail", "warn"])
def test_a_metric_the_new_run_did_not_measure_is_not_skipped(
    pytester: pytest.Pytester, missing: str
) -> None:
    """The baseline holds prefill tok/s; a run that no longer measures it must not pass as if
    the metric had held."""
    _suite(pytester, "s", FITS, f"baseline: {{missing: {missing}}}")
    pytester.makeconftest(LOSES_A_METRIC)
    pytester.runpytest_subprocess(*_args("save")).assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess(*_args("compare"))
    line = "*holds prefill_tok_s but this run did not measure it*"
    if missing == "fail":
        result.assert_outcomes(failed=1)
    else:
        result.assert_outcomes(passed=1)
        line = "*BaselineWarning*" + line
    result.stdout.fnmatch_lines([line])
