"""`--gpufit-runner`: a gate job keeps its class's items (the rest deselected, with reasons)
and judges the class's expect on the real probe, together with any --gpufit-expect."""

from __future__ import annotations

import json
import sys

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


# A module the plan job (CPU, no torch) does not collect, the GPU runner does.
CPU_ONLY_SKIP = """
import os
import pytest
if os.environ.get("PLAN_JOB"):
    pytest.importorskip("a_module_only_the_gpu_runner_has")

@pytest.mark.requires_gpu(count=2)
def test_big(): pass
"""
ONE_THEN_TWO = """\
runners:
  - name: one
    labels: [self-hosted, one]
    gpus: 1*h100-sxm
  - name: two
    labels: [self-hosted, two]
    gpus: 2*h100-sxm
placement: one
"""


def _matrix_plan(pytester: pytest.Pytester, *args: str) -> list[dict[str, object]]:
    result = pytester.run(
        sys.executable, "-m", "pytest_gpufit.cli", "plan", "--runners",
        "gpufit-runners.yaml", "--format", "github-matrix", *args,
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    include: list[dict[str, object]] = json.loads(result.stdout.str())["include"]
    return include


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]])
def test_a_gate_job_that_collects_what_the_plan_job_did_not_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, xdist: list[str]
) -> None:
    """The plan job never saw test_big (an importorskip), so class 'two' got no job; the gate
    job of 'one' collects it, places it on 'two' and would deselect it: green, and test_big
    never ran anywhere. With the plan job's digest the job fails instead."""
    if xdist:
        pytest.importorskip("xdist")
    monkeypatch.delenv("PLAN_JOB", raising=False)
    pytester.makepyfile(
        test_small="import pytest\n@pytest.mark.requires_gpu\ndef test_small(): pass\n",
        test_big=CPU_ONLY_SKIP,
    )
    pytester.makefile(".yaml", **{"gpufit-runners": ONE_THEN_TWO})
    pytester.makeconftest(probe("h100-sxm"))
    monkeypatch.setenv("PLAN_JOB", "1")
    include = _matrix_plan(pytester, ".")
    monkeypatch.delenv("PLAN_JOB")
    assert [e["runner"] for e in include] == ["one"]  # no job for 'two'
    args = ["--gpufit-runner=one", "--gpufit-on-missing=fail", *RUNNER, *xdist]
    result = pytester.runpytest(f"--gpufit-plan={include[0]['plan']}", *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    assert result.parseoutcomes()["failed"] == 1 and "passed" not in result.parseoutcomes()
    result.stdout.fnmatch_lines(["*this gate job's plan (*: 2 collected item(s)*differs*"])
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out
    # The same collection in both jobs: the digest matches and the job runs as planned.
    monkeypatch.setenv("PLAN_JOB", "1")
    same = pytester.runpytest(f"--gpufit-plan={include[0]['plan']}", *args)
    assert same.parseoutcomes() == {"passed": 1, "skipped": 1}, same.stdout.str()


def test_each_matrix_entry_carries_the_plan_its_job_checks(project: pytest.Pytester) -> None:
    project.makepyfile(test_fleet=TESTS.replace("def test_huge", "def _huge"))
    include = _matrix_plan(project, ".")
    assert len({e["plan"] for e in include}) == 1 and len(include) == 3
    for runner, cards in CARDS.items():
        project.makeconftest(probe(cards))
        ok = project.runpytest(
            f"--gpufit-runner={runner}", f"--gpufit-plan={include[0]['plan']}", *RUNNER
        )
        assert ok.ret == pytest.ExitCode.OK, ok.stdout.str()
    # The same -k/-m/--deselect in both jobs: the same plan (the gate selects after pytest's
    # own deselection, as `gpufit plan` sees the items); in one job only: a red job.
    project.makeconftest(probe("2*h100-sxm"))
    for narrow in (["-k", "two_gpus or sixty"], ["-m", "requires_gpu"]):
        narrowed = _matrix_plan(project, *narrow, ".")
        gate = ("--gpufit-runner=h100x2", f"--gpufit-plan={narrowed[0]['plan']}", *RUNNER)
        same = project.runpytest(*gate, *narrow)
        assert same.ret == pytest.ExitCode.OK, same.stdout.str()
        red = project.runpytest(*gate)
        assert red.ret == pytest.ExitCode.TESTS_FAILED, red.stdout.str()
    deselected = _matrix_plan(project, "--deselect", "test_fleet.py::test_two_gpus", ".")
    gate = ("--gpufit-runner=h100x2", f"--gpufit-plan={deselected[0]['plan']}", *RUNNER)
    same = project.runpytest(*gate, "--deselect", "test_fleet.py::test_two_gpus")
    assert same.ret == pytest.ExitCode.OK, same.stdout.str()
    assert same.parseoutcomes() == {"passed": 1, "deselected": 4}  # one by --deselect


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpufit-plan=abc"], "--gpufit-plan: expected the 'plan' of a gpufit plan matrix*"),
        (["--gpufit-plan=0123456789abcdef"], "*name the class with --gpufit-runner*"),
        (["--gpufit-runner=h100x2", "--gpufit-plan="], "--gpufit-plan is set but empty*"),
    ],
)
def test_bad_plan_digests_are_usage_errors(
    project: pytest.Pytester, args: list[str], message: str
) -> None:
    result = project.runpytest(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])
    assert "Traceback" not in result.stderr.str()


def test_a_cpu_class_job_runs_the_ungated_items_on_a_machine_with_no_gpu(
    project: pytest.Pytester,
) -> None:
    # The pool's CPU class takes the item that needs no GPU; its job on a GPU-less runner
    # (a hosted one) runs it under the fail policy: the class expects no GPU (count>=0).
    pool = "runners:\n  - name: cpu\n    labels: [ubuntu-latest]\n    gpus: none\n"
    (project.path / "gpufit-runners.yaml").write_text(pool + POOL.split("runners:\n", 1)[1])
    result = project.runpytest("--gpufit-runner=cpu", "--gpufit-on-missing=fail", *RUNNER)
    assert result.parseoutcomes() == {"passed": 1, "deselected": 5}, result.stdout.str()
    assert passed(result) == {"test_plain"}
    result.stdout.fnmatch_lines(["gpufit: runner class 'cpu' of *: expect 'count>=0'"])
    assert "does not match" not in result.stdout.str()
