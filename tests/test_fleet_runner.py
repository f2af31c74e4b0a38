"""`--gpufit-runner`: a gate job keeps its class's items (the rest deselected, with reasons)
and judges the class's expect on the real probe, together with any --gpufit-expect."""

from __future__ import annotations

import pytest
from fleet_project import EVERY, POOL, TESTS, probe

RUNNER = ("--gpufit-runners=gpufit-runners.yaml", "-p", "no:cacheprovider", "-rA")
CARDS = {"pro6000": "rtx-pro-6000-blackwell", "h100x2": "2*h100-sxm"}


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_fleet=TESTS)
    pytester.makefile(".yaml", **{"gpufit-runners": POOL})
    return pytester


def passed(result: pytest.RunResult) -> set[str]:
    return {
        line.split("::")[-1].strip()
        for line in result.outlines
        if line.startswith("PASSED test_fleet.py::")
    }


@pytest.mark.parametrize("runner", ["pro6000", "h100x2"])
def test_a_gate_job_runs_its_class_items_and_deselects_the_rest(
    project: pytest.Pytester, runner: str
) -> None:
    project.makeconftest(probe(CARDS[runner]))
    result = project.runpytest(f"--gpufit-runner={runner}", "--gpufit-on-missing=fail", *RUNNER)
    assert passed(result) == EVERY[runner], result.stdout.str()
    outcomes = result.parseoutcomes()
    if runner == "pro6000":
        # The orphaned gate stays on the first class, where the fail policy fails it.
        assert outcomes == {"passed": 4, "failed": 1, "deselected": 1}
        result.stdout.fnmatch_lines(["*test_huge*needs 500 GB of GPU memory*"])
        result.stdout.fnmatch_lines(
            ["*1 x planned for h100x2; this class cannot run it: needs 2 GPUs*"]
        )
    else:
        assert outcomes == {"passed": 2, "deselected": 4}
        result.stdout.fnmatch_lines(
            [
                "gpufit: runner class 'h100x2': 4 item(s) deselected*",
                "*1 x planned for pro6000; this class cannot run it: needs 90 GB*",
                "*1 x planned for pro6000; this class cannot run it: needs native fp4*",
                "*1 x ungated: runs once, on the first class 'pro6000'",
                "*1 x orphaned gate: no class can run it; kept on the first class 'pro6000'",
            ]
        )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_every_item_is_run_by_some_class(project: pytest.Pytester) -> None:
    seen: set[str] = set()
    for runner, cards in CARDS.items():
        project.makeconftest(probe(cards))
        result = project.runpytest(f"--gpufit-runner={runner}", "--collect-only", "-q", *RUNNER)
        seen |= {line.split("::")[-1] for line in result.outlines if "::test_" in line}
    assert seen == {
        "test_two_gpus",
        "test_ninety_gb",
        "test_fp4",
        "test_sixty_gb",
        "test_plain",
        "test_huge",
    }


def test_the_class_expect_is_judged_on_the_real_probe(project: pytest.Pytester) -> None:
    project.makeconftest(probe("rtx-4090"))
    result = project.runpytest("--gpufit-runner=h100x2", "--gpufit-on-missing=fail", *RUNNER)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "gpufit: this runner does not match the expect of runner class 'h100x2'*",
            "  - count>=2: found 1 GPU*",
        ]
    )
    assert "passed" not in result.stdout.str()


def test_the_class_driver_is_part_of_its_expect(project: pytest.Pytester) -> None:
    project.makeconftest(probe("rtx-pro-6000-blackwell", driver="560.35.03"))
    result = project.runpytest("--gpufit-runner=pro6000", *RUNNER)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["  - driver>=570: this machine has 560.35.03"])


def test_an_explicit_expect_must_hold_too(project: pytest.Pytester) -> None:
    project.makeconftest(probe("2*h100-sxm"))
    result = project.runpytest("--gpufit-runner=h100x2", "--gpufit-expect=count>=4", *RUNNER)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["gpufit: this runner does not match --gpufit-expect='count>=4':"])


def test_runner_and_pool_from_the_environment_and_the_ini(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeconftest(probe("2*h100-sxm"))
    (project.path / "gpufit-runners.yaml").rename(project.path / "pool.yaml")
    project.makeini("[pytest]\ngpufit_runners = pool.yaml\n")
    monkeypatch.setenv("GPUFIT_RUNNER", "h100x2")
    result = project.runpytest("-p", "no:cacheprovider", "-rA")
    assert result.parseoutcomes() == {"passed": 2, "deselected": 4}
    result.stdout.fnmatch_lines(
        ["gpufit: runner class 'h100x2' of *pool.yaml (from GPUFIT_RUNNER)*"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--gpufit-runner=h100x3"],
            "--gpufit-runner='h100x3': *gpufit-runners.yaml:1: runners: no class "
            "'h100x3' (it has pro6000, h100x2); did you mean 'h100x2'?",
        ),
        (["--gpufit-runner="], "--gpufit-runner is set but empty*"),
        (["--gpufit-runner=a b"], "--gpufit-runner: expected a runner class name*"),
        (
            ["--gpufit-runner=h100x2", "--gpufit-runners=nope.yaml"],
            "*nope.yaml: no such runner-pool file*",
        ),
    ],
)
def test_bad_runner_settings_are_usage_errors(
    project: pytest.Pytester, args: list[str], message: str
) -> None:
    result = project.runpytest(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])
    assert "Traceback" not in result.stderr.str() and "INTERNALERROR" not in result.stderr.str()


def test_a_bad_pool_is_a_usage_error_with_its_line(project: pytest.Pytester) -> None:
    project.makefile(".yaml", **{"gpufit-runners": POOL.replace("2*h100-sxm", "2*h100-sxn")})
    result = project.runpytest("--gpufit-runner=h100x2", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = "gpufit-runners.yaml:8: runners[1].gpus: unknown GPU id 'h100-sxn'"
    assert line in result.stderr.str()


def test_simulation_with_a_runner_previews_the_job_and_never_gates(
    project: pytest.Pytester,
) -> None:
    result = project.runpytest("--gpufit-runner=h100x2", "--gpufit-simulate=2*h100-sxm", *RUNNER)
    assert result.parseoutcomes() == {"skipped": 2, "deselected": 4}
    assert "does not match" not in result.stdout.str()  # no expect judged on catalog cards
    refused = project.runpytest(
        "--gpufit-runner=h100x2",
        "--gpufit-simulate=2*h100-sxm",
        "--gpufit-on-missing=fail",
        "-p",
        "no:cacheprovider",
    )
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
