"""Skips under a gate: ``--gpufit-forbid-skips`` (issue 18 #12) and the terminal summary that
names every skip reason once (issue 22 #4), through real sessions."""

from __future__ import annotations

import pytest
from fake_probe import catalog_probe

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.settings import resolve

# A GPU module guarded by importorskip, beside a test that runs: the hole of issue 18 #12.
GUARDED = """
import pytest

vllm = pytest.importorskip("gpufit_no_such_module_vllm")

def test_serves():
    pass
"""
PLAIN = "def test_plain(gpu):\n    pass\n"

# Every way a test can skip, one test each.
SKIPS = """
import pytest

@pytest.mark.skip(reason="mark says no")
def test_mark():
    pass

@pytest.mark.skipif(True, reason="skipif says no")
def test_skipif():
    pass

def test_inside():
    pytest.skip("the test said no")

@pytest.fixture
def needs():
    pytest.skip("the fixture said no")

def test_fixture(needs):
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

def test_runs():
    pass
"""


def test_without_the_option_an_importorskip_passes_a_fail_gate(pytester: pytest.Pytester) -> None:
    # What the issue found: under fail, an importorskip guard leaves the run green.
    pytester.makeconftest(catalog_probe("rtx-4090"))
    pytester.makepyfile(test_guarded=GUARDED, test_plain=PLAIN)
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]])
def test_an_importorskip_at_collection_fails_the_run_naming_its_reason(
    pytester: pytest.Pytester, xdist: list[str]
) -> None:
    pytester.makeconftest(catalog_probe("rtx-4090"))
    pytester.makepyfile(test_guarded=GUARDED, test_plain=PLAIN)
    result = pytester.runpytest_subprocess(
        "--gpufit-on-missing=fail", "--gpufit-forbid-skips", *xdist
    )
    assert result.ret not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    output = result.stdout.str()
    assert "gpufit: skipped (could not import 'gpufit_no_such_module_vllm'" in output
    assert "skips fail this run (--gpufit-forbid-skips)" in output
    assert "1 skipped" not in output


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]])
def test_every_test_skip_fails_and_names_its_reason(
    pytester: pytest.Pytester, xdist: list[str]
) -> None:
    pytester.makepyfile(SKIPS)
    result = pytester.runpytest_subprocess("--gpufit-forbid-skips", "-rf", *xdist)
    result.assert_outcomes(failed=4, passed=1, xfailed=1)
    output = result.stdout.str()
    for reason in ("mark says no", "skipif says no", "the test said no", "the fixture said no"):
        assert f"gpufit: skipped ({reason}), and skips fail this run" in output, reason
    assert "known bug" not in output.split("short test summary info")[-1]  # xfail is no skip


def test_gpufits_own_skip_fails_too(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(catalog_probe("rtx-4090"))
    pytester.makepyfile("""
        import pytest

        @pytest.mark.requires_vram(80)
        def test_big():
            pass
    """)
    monkey = pytest.MonkeyPatch()
    with monkey.context() as m:
        m.setenv("GPUFIT_FORBID_SKIPS", "true")
        result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*gpufit: skipped (needs 80 GB of GPU memory; GPU0 *), and skips fail this run "
            "(GPUFIT_FORBID_SKIPS)*"
        ]
    )


def test_the_allow_list_keeps_accepted_reasons_as_skips(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SKIPS)
    result = pytester.runpytest(
        "--gpufit-forbid-skips",
        "--gpufit-allow-skip=says no$",
        "--gpufit-allow-skip=fixture",
    )
    # mark, skipif (says no) and the fixture's skip are accepted; the test's own is not.
    result.assert_outcomes(failed=1, skipped=3, passed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*gpufit: skipped (the test said no)*"])


def test_the_allow_list_from_the_ini_file_one_a_line(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        gpufit_forbid_skips = true
        gpufit_allow_skip =
            mark says
            the fixture
    """)
    pytester.makepyfile(SKIPS)
    result = pytester.runpytest()
    result.assert_outcomes(failed=2, skipped=2, passed=1, xfailed=1)


def test_the_allow_list_from_the_environment_one_a_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUFIT_FORBID_SKIPS", "1")
    monkeypatch.setenv("GPUFIT_ALLOW_SKIP", "mark says\nthe test said\n")
    pytester.makepyfile(SKIPS)
    result = pytester.runpytest()
    result.assert_outcomes(failed=2, skipped=2, passed=1, xfailed=1)


def test_an_allowed_collection_skip_stays_a_skip(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(catalog_probe("rtx-4090"))
    pytester.makepyfile(test_guarded=GUARDED, test_plain=PLAIN)
    result = pytester.runpytest(
        "--gpufit-forbid-skips", "--gpufit-allow-skip=could not import 'gpufit_no_such"
    )
    result.assert_outcomes(passed=1, skipped=1)


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        (
            [],
            {"GPUFIT_FORBID_SKIPS": "maybe"},
            "GPUFIT_FORBID_SKIPS: expected true or false, got 'maybe'",
        ),
        (
            ["--gpufit-forbid-skips", "--gpufit-allow-skip=(unclosed"],
            {},
            "--gpufit-allow-skip: '(unclosed' is not a regular expression: *",
        ),
        (
            ["--gpufit-allow-skip=vllm"],
            {},
            "*allow_skip (from --gpufit-allow-skip) accepts skip reasons that forbid_skips would "
            "fail, and forbid_skips is off (from default)*",
        ),
        (
            ["--gpufit-forbid-skips", "--gpufit-simulate=t4"],
            {},
            "*forbid_skips (from --gpufit-forbid-skips) and simulate='t4' (from "
            "--gpufit-simulate) cannot be combined*",
        ),
        ([], {"GPUFIT_ALLOW_SKIP": "\n \n"}, "GPUFIT_ALLOW_SKIP is set but empty*"),
    ],
)
def test_bad_skip_settings_are_usage_errors_naming_their_source(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    cli: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(*cli)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])


def test_skip_settings_resolve_to_a_switch_and_a_tuple() -> None:
    settings = resolve(
        lambda name: {"forbid_skips": "true", "allow_skip": ["a", " b "]}.get(name),
        lambda key: None,
        {},
    )
    assert settings.forbid_skips is True and settings.allow_skip == ("a", "b")
    assert settings.source("allow_skip") == "--gpufit-allow-skip"
    with pytest.raises(GpufitError, match="ini gpufit_forbid_skips: expected true or false"):
        resolve(lambda name: None, lambda key: "sure" if key == "gpufit_forbid_skips" else None, {})


# ---- skips by other names (the gate attack of the layer) -------------------------------------

# Ways out of a test that report "xfailed", not "skipped": each stops the test where a skip would.
XFAILS = """
import pytest

@pytest.mark.xfail(run=False, reason="needs vllm")
def test_never_run():
    pass

def test_bails_out():
    pytest.xfail("no vllm here")

@pytest.fixture
def engine():
    pytest.xfail("the fixture found no engine")

def test_fixture_bails_out(engine):
    pass

@pytest.mark.xfail(reason="known bug")
def test_known_bug():
    assert False
"""


def test_an_xfail_that_stops_a_test_before_it_ran_is_a_skip(pytester: pytest.Pytester) -> None:
    """xfail(run=False) never runs its test and pytest.xfail() bails out like pytest.skip();
    both passed a forbid-skips run as "xfailed". A test that ran and failed under its xfail
    mark stays an xfail."""
    pytester.makepyfile(XFAILS)
    result = pytester.runpytest("--gpufit-forbid-skips", "-rf")
    result.assert_outcomes(failed=3, xfailed=1)
    for reason in (
        "xfail, not run: needs vllm",
        "pytest.xfail: no vllm here",
        "pytest.xfail: the fixture found no engine",
    ):
        assert f"gpufit: skipped ({reason}), and skips fail this run" in result.stdout.str()
    allowed = pytester.runpytest("--gpufit-forbid-skips", "--gpufit-allow-skip=needs vllm")
    allowed.assert_outcomes(failed=2, xfailed=2)
    # Without the rule pytest's own outcomes stand.
    pytester.runpytest().assert_outcomes(xfailed=4)


@pytest.mark.parametrize("pattern", [".*", "vllm|", "^", "(?i)", ".", "(?s).?"])
def test_an_allow_list_pattern_that_accepts_every_reason_is_a_usage_error(
    pytester: pytest.Pytester, pattern: str
) -> None:
    """`--gpufit-allow-skip=.*` kept every skip a skip: forbid-skips switched off unseen."""
    pytester.makepyfile("import pytest\ndef test_x():\n    pytest.skip('no vllm')\n")
    result = pytester.runpytest("--gpufit-forbid-skips", f"--gpufit-allow-skip={pattern}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--gpufit-allow-skip: {pattern!r} matches any skip reason*"])


EXITS = """
import pytest

def test_first():
    pass

def test_stops():
    pytest.exit("no GPU here, stopping", returncode=0)

def test_never_reached():
    assert False
"""


def test_pytest_exit_with_code_0_fails_a_run_that_forbids_skips(
    pytester: pytest.Pytester,
) -> None:
    """A conftest or test that calls pytest.exit(..., returncode=0) when its engine is missing
    ended the gate "1 passed", exit 0, the rest never run."""
    pytester.makepyfile(EXITS)
    assert pytester.runpytest("-p", "no:randomly").ret == pytest.ExitCode.OK  # pytest's own
    result = pytester.runpytest("-p", "no:randomly", "--gpufit-forbid-skips")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "gpufit: pytest.exit() ended the run early with exit code 0 (no GPU here, "
            "stopping): the tests after it did not run, and skips fail this run "
            "(--gpufit-forbid-skips)*"
        ]
    )
    # A non-zero code is the user's own failure: kept as given.
    pytester.makepyfile(EXITS.replace("returncode=0", "returncode=3"))
    assert pytester.runpytest("-p", "no:randomly", "--gpufit-forbid-skips").ret == 3


# ---- the terminal summary names every skip reason once (issue 22 #4) -------------------------


def test_the_summary_groups_skip_reasons_of_a_session_that_uses_gpufit(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(catalog_probe("rtx-4090"))
    pytester.makepyfile(
        test_skips=SKIPS,
        test_gated="""
            import pytest

            @pytest.mark.requires_vram(80)
            def test_big():
                pass

            @pytest.mark.requires_vram(90)
            def test_bigger():
                pass

            def test_vllm(gpu):
                pytest.importorskip("gpufit_no_such_module_vllm")
        """,
    )
    result = pytester.runpytest("-q")
    result.assert_outcomes(passed=1, skipped=7, xfailed=1)
    out = result.stdout.str()
    # The unmet requirements are said once, by the verdict lines; every other skip once here.
    assert out.count("needs 80 GB of GPU memory") == 1 and "not run (1): needs 80 GB" in out
    result.stdout.fnmatch_lines(
        [
            "gpufit: 5 more tests skipped:",
            "  1 test: could not import 'gpufit_no_such_module_vllm'*",
            "  1 test: mark says no",
        ],
        consecutive=False,
    )
    for reason in ("skipif says no", "the test said no", "the fixture said no"):
        assert f"  1 test: {reason}" in out
    assert "known bug" not in out


def test_a_session_that_does_not_use_gpufit_prints_no_skip_summary(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(SKIPS)
    result = pytester.runpytest("-q")
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    result.stdout.no_fnmatch_line("gpufit:*")
