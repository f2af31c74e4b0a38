"""Options, bad input, the runner expectation and plugin hygiene, through real sessions."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from fake_probe import catalog_probe, nvml_probe


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("requires_vram('lots')", "requires_vram: expected a number of GB*got 'lots'"),
        ("requires_vram('10 parsecs')", "requires_vram: unknown unit 'parsecs'*"),
        ("requires_vram(-5)", "requires_vram: must be a positive size*"),
        ("requires_dtype('fp7')", "requires_dtype: unknown dtype 'fp7'; accepted: fp32, tf32, *"),
        ("requires_driver('newest')", "requires_driver: expected a version such as '>=550'*"),
        ("requires_compute_capability('ampere')", "*expected a compute capability such as '8.9'*"),
        ("requires_gpu(count=0)", "requires_gpu count: expected a whole number >= 1, got 0"),
        ("requires_gpu(cards=2)", "requires_gpu: unknown argument 'cards'; accepted: count, name"),
    ],
)
def test_bad_marker_arguments_are_usage_errors_naming_test_and_marker(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.{marker}
        def test_x():
            pass
    """)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_bad_marker_arguments*::test_x: @{message}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_bad_decorator_argument_is_a_collection_error_at_the_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("""
        from pytest_gpufit import requires_vram

        @requires_vram("lots")
        def test_x():
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*:3: in <module>",
            '*@requires_vram("lots")*',
            "E   *GpufitError: requires_vram: expected a number of GB*",
        ]
    )
    result.stdout.no_fnmatch_line("*pytest_gpufit/requirements.py*")


def test_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(1)
        @pytest.mark.requires_fit("qwen3-0.6b")
        def test_x():
            pass
    """)
    result = pytester.runpytest("--strict-markers", "--gpufit-simulate=t4")
    result.assert_outcomes(skipped=1)
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.requires_vram(size, free=False)*"])


def test_pytest_help_lists_every_gpufit_option(pytester: pytest.Pytester) -> None:
    # argparse %-formats each help text: a bare "5%" in one made `pytest --help` a traceback.
    from pytest_gpufit.settings import OPTIONS

    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    out = result.stdout.str()
    for option in OPTIONS:
        assert option.flag in out
    result.stdout.fnmatch_lines(["*--gpufit-baseline-tolerance*", "*e.g. 5%*"])


@pytest.mark.parametrize(
    ("ini", "env", "cli", "expected_outcome"),
    [
        (None, None, None, "skipped"),
        ("fail", None, None, "failed"),
        ("fail", "skip", None, "skipped"),
        ("skip", "fail", None, "failed"),
        ("fail", "fail", "skip", "skipped"),
        (None, "skip", "fail", "failed"),
    ],
)
def test_resolution_order_ini_then_env_then_cli(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    ini: str | None,
    env: str | None,
    cli: str | None,
    expected_outcome: str,
) -> None:
    if ini:
        pytester.makeini(f"[pytest]\ngpufit_on_missing = {ini}\n")
    if env:
        monkeypatch.setenv("GPUFIT_ON_MISSING", env)
    pytester.makeconftest(catalog_probe("t4"))
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(500)
        def test_x():
            pass
    """)
    args = [f"--gpufit-on-missing={cli}"] if cli else []
    result = pytester.runpytest(*args)
    result.assert_outcomes(**{expected_outcome: 1})


def test_bad_env_value_names_its_source(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUFIT_ON_MISSING", "maybe")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*GPUFIT_ON_MISSING: expected skip or fail, got 'maybe'*"])


def test_simulate_from_env_and_unknown_id(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_x(): pass")
    monkeypatch.setenv("GPUFIT_SIMULATE", "2*h200")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["gpufit: GPU1 NVIDIA H200, 150.8 GB (140.4 GiB), CC 9.0 *"])
    result = pytester.runpytest("--gpufit-simulate=h300")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown GPU id 'h300'; known ids: rtx-4090, *, mi300x*"])


def test_expect_mismatch_stops_the_session_listing_every_failed_clause(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(catalog_probe("h100-sxm"))
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--gpufit-expect=count>=1,vram>=90GB,name~RTX PRO 6000,cc>=12.0")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "passed" not in out, "no test may run on a runner that does not match"
    assert "vram>=90GB: GPU0 NVIDIA H100 80GB HBM3 has 85.5 GB" in out
    assert "name~RTX PRO 6000: GPU0 NVIDIA H100 80GB HBM3 has 'NVIDIA H100 80GB HBM3'" in out
    assert "cc>=12.0: GPU0 NVIDIA H100 80GB HBM3 has CC 9.0" in out
    assert "  - count>=1" not in out, "a clause that holds is not listed"


def test_expect_mismatch_says_what_the_machine_has_on_one_line(pytester: pytest.Pytester) -> None:
    # The card's host facts follow its line, joined as one clause: no indent left inside it.
    pytester.makeconftest(nvml_probe("[FakeCard()]"))
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--gpufit-expect=name~RTX PRO 6000")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["  this machine has: GPU0 NVIDIA H100 80GB HBM3, 85.5 GB *, CUDA 12.4; PCIe gen1 x16 *"]
    )


def test_expect_match_runs_normally(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(catalog_probe("rtx-pro-6000-blackwell"))
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(
        "--gpufit-expect=count>=1,vram>=90GB,name~RTX PRO 6000,cc>=12.0,dtype=fp4"
    )
    result.assert_outcomes(passed=1)


def test_expect_without_gpu_fails_the_session(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        from pytest_gpufit.hardware.records import Inventory
        def pytest_gpufit_probe(config):
            return Inventory(reason="GPU is lost (fell off the bus or stopped answering)")
    """)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--gpufit-expect=count>=1,driver>=550")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*count>=1: found 0 GPUs (GPU is lost*", "*driver>=550: this machine has none*"]
    )


@pytest.mark.parametrize("expr", ["count>>2", "vram>=lots", "colour=blue", "name>=H100"])
def test_malformed_expect_is_a_usage_error(pytester: pytest.Pytester, expr: str) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(f"--gpufit-expect={expr}", "--gpufit-simulate=t4")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --gpufit-expect: *"])


def test_json_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(30)
        def test_a(): pass

        @pytest.mark.requires_dtype("fp4")
        def test_b(): pass
    """)
    report = pytester.path / "out" / "gpufit.json"
    pytester.runpytest("--gpufit-simulate=h100-sxm", f"--gpufit-report={report}")
    data = json.loads(report.read_text())
    assert data["inventory"]["source"] == "simulated"
    assert data["inventory"]["gpus"][0]["catalog_id"] == "h100-sxm"
    verdicts = data["verdicts"]
    assert verdicts["test_json_report.py::test_a"]["ok"] is True
    assert verdicts["test_json_report.py::test_a"]["devices"] == [0]
    assert "fp4" in verdicts["test_json_report.py::test_b"]["reason"]


def test_junit_xml_carries_the_verdict(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(30)
        def test_a(): pass
    """)
    pytester.runpytest("--gpufit-simulate=t4", "--junitxml=out.xml")
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="gpufit_ok" value="false"' in xml
    assert "needs 30 GB of GPU memory" in xml


def test_verdicts_reach_the_controller_under_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("n", range(6))
        @pytest.mark.requires_vram(30)
        def test_a(n): pass
    """)
    result = pytester.runpytest_subprocess("-n", "2", "--gpufit-simulate=h100-sxm")
    result.stdout.fnmatch_lines(["gpufit: 6 of 6 gated tests would run (simulated)"])


def test_disabling_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(10000)
        def test_a(): pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:gpufit")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("gpufit:*")


def test_collection_imports_no_torch_transformers_or_vllm(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(80)
        @pytest.mark.requires_dtype("bf16")
        @pytest.mark.requires_torch(">=2.0")
        @pytest.mark.requires_cuda(">=12.0")
        def test_a(): pass
    """)
    pytester.makeconftest("""
        import sys
        def pytest_collection_finish(session):
            heavy = [m for m in ("torch", "transformers", "vllm") if m in sys.modules]
            print("HEAVY:", heavy)
    """)
    result = pytester.runpytest_subprocess("--collect-only", "-s")
    result.stdout.fnmatch_lines(["HEAVY: []"])


def test_importing_the_plugin_is_light() -> None:
    code = (
        "import sys, pytest_gpufit, pytest_gpufit.plugin; "
        "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'pynvml', 'numpy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- simulation never gates; the expectation is judged on the real probe (issue 10 #2) -----

NO_GPU = """
from pytest_gpufit.hardware.records import Inventory
def pytest_gpufit_probe(config):
    return Inventory(reason="NVIDIA driver not loaded")
"""


@pytest.mark.parametrize("fake_probe", [True, False])
def test_leaked_simulation_cannot_pass_a_gate(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fake_probe: bool
) -> None:
    if fake_probe:
        pytester.makeconftest(NO_GPU)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_gpu
        def test_x(): pass
    """)
    monkeypatch.setenv("GPUFIT_SIMULATE", "rtx-pro-6000-blackwell")
    result = pytester.runpytest_subprocess("--gpufit-on-missing=fail", "--gpufit-expect=count>=1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: on_missing=fail (from --gpufit-on-missing) and "
            "simulate='rtx-pro-6000-blackwell' (from GPUFIT_SIMULATE) cannot be combined*"
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_simulation_and_fail_from_ini_and_env(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\ngpufit_simulate = h100-sxm\n")
    monkeypatch.setenv("GPUFIT_ON_MISSING", "fail")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*on_missing=fail (from GPUFIT_ON_MISSING) and simulate='h100-sxm' (from ini "
            "gpufit_simulate) cannot be combined*"
        ]
    )


@pytest.mark.parametrize("where", ["env", "ini", "cli"])
def test_expect_is_judged_on_the_real_probe_not_the_simulated_cards(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    pytester.makeconftest(NO_GPU)
    pytester.makepyfile("def test_x(): pass")
    args = ["--gpufit-expect=count>=1"]
    if where == "env":
        monkeypatch.setenv("GPUFIT_SIMULATE", "rtx-pro-6000-blackwell")
    elif where == "ini":
        pytester.makeini("[pytest]\ngpufit_simulate = rtx-pro-6000-blackwell\n")
    else:
        args.append("--gpufit-simulate=rtx-pro-6000-blackwell")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*count>=1: found 0 GPUs (NVIDIA driver not loaded)*"])
    assert "passed" not in result.stdout.str()


def test_a_failed_expectation_is_printed_once(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(catalog_probe("h100-sxm"))
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--gpufit-expect=vram>=90GB")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str() + result.stderr.str()
    assert out.count("does not match --gpufit-expect='vram>=90GB'") == 1, out
    assert out.count("vram>=90GB: GPU0 NVIDIA H100 80GB HBM3 has 85.5 GB") == 1, out
    assert "Exit" not in out and "Traceback" not in out


# ---- set but empty is an error (#9); ASCII digits only (#7, settings part) ------------------


@pytest.mark.parametrize("where", ["cli", "env", "ini"])
def test_expect_set_but_empty_is_an_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    args = []
    if where == "cli":
        args.append("--gpufit-expect=")
        source = "--gpufit-expect"
    elif where == "env":
        monkeypatch.setenv("GPUFIT_EXPECT", "")
        source = "GPUFIT_EXPECT"
    else:
        pytester.makeini("[pytest]\ngpufit_expect =\n")
        source = "ini gpufit_expect"
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {source} is set but empty; unset it or give *"])


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("GPUFIT_DEVICES", "GPUFIT_DEVICES: expected GPU indices such as 0,1, got '²'"),
        ("GPUFIT_GPUS_PER_WORKER", "GPUFIT_GPUS_PER_WORKER: expected a whole number >= 1, got '²'"),
    ],
)
def test_unicode_digits_are_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, variable: str, message: str
) -> None:
    monkeypatch.setenv(variable, "²")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_a_whole_number_of_thousands_of_digits_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # int() refuses more than 4300 digits with a ValueError: that was a traceback.
    monkeypatch.setenv("GPUFIT_GPUS_PER_WORKER", "9" * 5000)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: GPUFIT_GPUS_PER_WORKER: expected at most 100 digits, *"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        # the five callers' messages: settings and the CLI (text), markers, fit commands, suites
        ("0", {"what": "--batch", "text": True}, "--batch: expected a whole number >= 1, got '0'"),
        ("²", {"what": "X", "text": True}, "X: expected a whole number >= 1, got '²'"),
        ("2", {"what": "requires_gpu count"}, "requires_gpu count: expected a whole number >= 1"),
        (True, {"what": "n"}, "n: expected a whole number >= 1, got True"),
        (
            65,
            {"what": "requires_fit gpus", "maximum": 64},
            "requires_fit gpus: expected at most 64",
        ),
        ("1000000000", {"maximum": 999_999_999, "text": True}, "expected at most 999,999,999"),
        (
            "many",
            {"maximum": 1000, "unit": " runs", "say_range": True},
            "expected a whole number from 1 to 1,000 runs, got 'many'",
        ),
        (-1, {"minimum": 0, "maximum": 10}, "expected a whole number >= 0, got -1"),
    ],
)
def test_one_whole_number_parser(value: object, kwargs: dict[str, Any], message: str) -> None:
    from pytest_gpufit.errors import GpufitError
    from pytest_gpufit.numbers import parse_whole

    with pytest.raises(GpufitError) as error:
        parse_whole(value, **kwargs)
    assert str(error.value).startswith(message)


def test_one_whole_number_parser_accepts() -> None:
    from pytest_gpufit.numbers import parse_whole

    assert parse_whole(5.0, "x") == 5  # JSON's 5.0
    assert parse_whole("007", "x", text=True) == 7
    assert parse_whole(0, "x", minimum=0) == 0
    assert parse_whole(1000, "x", maximum=1000) == 1000


def test_settings_resolve_keeps_its_signature_and_names_sources() -> None:
    from pytest_gpufit.settings import OPTIONS, defaults, resolve

    settings = resolve(
        lambda name: "2" if name == "gpus_per_worker" else None,
        lambda key: "compare" if key == "gpufit_baseline" else None,
        {"GPUFIT_BASELINE_TOLERANCE": "10%"},
    )
    assert settings.gpus_per_worker == 2 and settings.baseline == "compare"
    assert settings.baseline_tolerance == pytest.approx(0.1)
    assert settings.source("baseline") == "ini gpufit_baseline"
    assert settings.source("baseline_tolerance") == "GPUFIT_BASELINE_TOLERANCE"
    assert settings.source("on_missing") == "default"
    plain = resolve(lambda name: None, lambda key: None, {})
    assert plain == defaults() and not plain.explicit
    assert {o.name: o.default for o in OPTIONS}["baseline_dir"] == plain.baseline_dir


# ---- no side effects in sessions that do not use gpufit (#13) ----------------------------


def test_an_unused_plugin_does_not_probe_or_print(pytester: pytest.Pytester) -> None:
    calls = pytester.path / "probes.txt"
    pytester.makeconftest(nvml_probe("[FakeCard()]", str(calls)))
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert not calls.exists(), "a session that uses no gpufit feature must not probe"
    result.stdout.no_fnmatch_line("gpufit:*")


@pytest.mark.parametrize(
    "test", ["@pytest.mark.requires_gpu\ndef test_x(): pass", "def test_x(gpu): pass"]
)
def test_a_used_plugin_reports_the_inventory(pytester: pytest.Pytester, test: str) -> None:
    calls = pytester.path / "probes.txt"
    pytester.makeconftest(nvml_probe("[FakeCard()]", str(calls)))
    pytester.makepyfile("import pytest\n" + test)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["collected 1 item", "gpufit: GPU0 NVIDIA H100 80GB HBM3, *"])
    assert calls.read_text() == "probe\n", "probed once"


def test_step_summary_only_from_sessions_that_use_gpufit(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makeconftest(catalog_probe("h100-sxm"))
    pytester.makepyfile(test_plain="def test_plain(): pass")
    pytester.runpytest("test_plain.py").assert_outcomes(passed=1)
    assert not summary.exists(), "a session without gpufit must not write the CI job summary"
    pytester.makepyfile(
        test_gated="import pytest\n@pytest.mark.requires_vram(30)\ndef test_gated(): pass"
    )
    pytester.runpytest("test_gated.py").assert_outcomes(passed=1)
    assert "## pytest-gpufit" in summary.read_text()


def test_step_summary_from_gated_tests_under_xdist(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xdist")
    summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makeconftest(NO_GPU)
    pytester.makepyfile(test_plain="def test_plain(): pass")
    pytester.runpytest_subprocess("-n", "2", "test_plain.py").assert_outcomes(passed=1)
    assert not summary.exists()
    pytester.makepyfile(test_used="def test_used(gpu_environment): pass")
    pytester.runpytest_subprocess("-n", "2", "test_used.py").assert_outcomes(passed=1)
    assert "no GPU: NVIDIA driver not loaded" in summary.read_text()


def test_the_readme_options_table_names_every_option() -> None:
    # The README's table is where a newcomer looks up what the shipped workflow passes.
    from pathlib import Path

    from pytest_gpufit.settings import OPTIONS

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `--gpufit-")]
    for option in OPTIONS:
        row = next((line for line in table if line.startswith(f"| `{option.flag}")), None)
        assert row is not None, f"README's options table lacks {option.flag}"
        assert f"`{option.ini}`" in row and f"`{option.env}`" in row, row
