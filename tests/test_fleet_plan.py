"""`gpufit plan`: collection in-process, placement by simulation, the table, the GitHub matrix
and orphaned gates; through the console script, as users meet it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fleet_project import EVERY, POOL, TESTS

from pytest_gpufit.fleet.plan import ItemFact, make_plan
from pytest_gpufit.fleet.pool import load_pool
from pytest_gpufit.requirements import Requirement


def plan(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "pytest_gpufit.cli", "plan", *args)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_fleet=TESTS)
    pytester.makefile(".yaml", **{"gpufit-runners": POOL})
    return pytester


def test_an_orphaned_gate_fails_the_plan_with_its_requirement(project: pytest.Pytester) -> None:
    result = plan(project, "--runners", "gpufit-runners.yaml", "test_fleet.py")
    assert result.ret == 1, result.stdout.str() + result.stderr.str()
    out = result.stdout.str()
    assert "1 orphaned gate(s)" in out and "test_fleet.py::test_huge" in out
    assert "pro6000: needs 500 GB of GPU memory" in out and "h100x2: needs 500 GB" in out
    # The table: class x items, and why each class cannot run the rest.
    assert "6 items (5 gated, 1 ungated)" in out
    assert "h100x2 cannot run:" in out and "needs native fp4 support" in out
    assert "pro6000 cannot run:" in out and "needs 2 GPUs; found 1" in out
    assert "Traceback" not in out + result.stderr.str()
    matrix = plan(project, "--runners", "gpufit-runners.yaml", "--format", "github-matrix", ".")
    assert matrix.ret == 1 and matrix.stdout.str().strip() == ""  # no matrix for a bad plan
    assert "test_fleet.py::test_huge" in matrix.stderr.str()


def test_the_matrix_has_one_entry_per_class_and_shard(project: pytest.Pytester) -> None:
    result = plan(
        project,
        "--runners",
        "gpufit-runners.yaml",
        "--format",
        "github-matrix",
        "--",
        "test_fleet.py",
        "-k",
        "not huge",
    )
    assert result.ret == 0, result.stderr.str()
    lines = result.stdout.str().splitlines()
    assert len(lines) == 1  # what $GITHUB_OUTPUT takes after "matrix="
    include = json.loads(lines[0])["include"]
    assert [(e["runner"], e["shard"], e["shards"]) for e in include] == [
        ("pro6000", 1, 1),
        ("h100x2", 1, 2),
        ("h100x2", 2, 2),
    ]
    assert include[0]["labels"] == ["self-hosted", "linux", "gpu", "rtx-pro-6000"]
    assert include[0]["expect"] == (
        "count>=1,vram>=97GB,name~NVIDIA RTX PRO 6000 Blackwell Workstation Edition,"
        "cc>=12.0,driver>=570"
    )
    assert include[1]["expect"] == "count>=2,vram>=81GB,name~NVIDIA H100 80GB HBM3,cc>=9.0"
    text = plan(project, "--runners", "gpufit-runners.yaml", "test_fleet.py", "-k", "not huge")
    assert text.ret == 0
    table = text.stdout.str()
    assert "pro6000  1*rtx-pro-6000-blackwell  >=570   1       4     3      1" in table, table
    assert "h100x2   2*h100-sxm                -       2       2     2      0" in table, table


def test_a_runner_set_in_the_environment_does_not_thin_the_plan(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUFIT_RUNNER", "h100x2")
    result = plan(project, "--runners", "gpufit-runners.yaml", "test_fleet.py")
    assert "6 items (5 gated, 1 ungated)" in result.stdout.str(), result.stderr.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runners", "missing.yaml", "."], "no such runner-pool file"),
        (["--runners", "", "."], "--runners is set but empty"),
        (["--runners", "gpufit-runners.yaml", "nowhere/"], "collecting nowhere/ failed"),
        (["--runners", "gpufit-runners.yaml", "--gpufit-on-missing=maybe"], "failed (pytest exit"),
        (["--runners", "gpufit-runners.yaml", "-p", "no:gpufit", "."], "plugin is not active"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(
    project: pytest.Pytester, args: list[str], message: str
) -> None:
    result = plan(project, *args)
    assert result.ret == 2, result.stdout.str() + result.stderr.str()
    err = result.stderr.str()
    assert message in err and "Traceback" not in err, err


def test_a_broken_pool_names_its_line(project: pytest.Pytester) -> None:
    project.makefile(".yaml", **{"gpufit-runners": POOL.replace("shards: 2", "shards: 0")})
    result = plan(project, "--runners", "gpufit-runners.yaml", ".")
    assert result.ret == 2
    assert "gpufit-runners.yaml:9: runners[1].shards" in result.stderr.str()


def test_placement_one_puts_each_gate_on_the_first_class_that_can(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(POOL.replace("placement: every", "placement: one"))
    pool = load_pool(path)
    facts = [
        ItemFact("sixty", Requirement(vram_bytes=60 * 10**9), True),
        ItemFact("two", Requirement(count=2), True),
        ItemFact("plain", None, False),
    ]
    placed = {p.nodeid: p.runners for p in make_plan(pool, facts).items}
    assert placed == {"sixty": ("pro6000",), "two": ("h100x2",), "plain": ("pro6000",)}


def test_every_item_is_kept_by_some_class_and_gates_by_each_that_can(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(POOL)
    pool = load_pool(path)
    needs = {
        "test_two_gpus": Requirement(count=2),
        "test_ninety_gb": Requirement(vram_bytes=90 * 10**9),
        "test_fp4": Requirement(dtypes=("fp4",)),
        "test_sixty_gb": Requirement(vram_bytes=60 * 10**9),
        "test_huge": Requirement(vram_bytes=500 * 10**9),
    }
    facts = [ItemFact(n, r, True) for n, r in needs.items()] + [ItemFact("test_plain", None, False)]
    result = make_plan(pool, facts)
    for name, expected in EVERY.items():
        assert result.keeps(name) == expected | ({"test_huge"} if name == "pro6000" else set())
    assert set().union(*(result.keeps(r.name) for r in pool.runners)) == {f.nodeid for f in facts}


def test_p2p_is_planned_on_the_classes_whose_cards_have_it(tmp_path: Path) -> None:
    """The plan judged each class's cards without their links: every requires_p2p check was
    an orphaned gate, though --gpufit-simulate=2*h100-sxm says NVLink joins the pair."""
    path = tmp_path / "pool.yaml"
    path.write_text(
        "runners:\n"
        "  - {name: nvlink, labels: [self-hosted], gpus: 2*h100-sxm}\n"
        "  - {name: pcie, labels: [self-hosted], gpus: 2*rtx-4090}\n"
        "placement: every\n"
    )
    facts = [ItemFact("p2p", Requirement(count=2, p2p=True), True)]
    (placed,) = make_plan(load_pool(path), facts).items
    assert placed.runners == ("nvlink",) and not placed.orphaned
    assert "GPU0-GPU1 P2P read/write not supported" in dict(placed.cannot)["pcie"]


def test_a_plan_of_2000_gated_tests_on_6_classes_places_every_one(tmp_path: Path) -> None:
    """Every item is placed or orphaned (its time is benchmarks/fleet_plan.py's: no timed
    assertion here, a loaded CI machine made one flaky)."""
    cards = ["rtx-4090", "rtx-pro-6000-blackwell", "h100-sxm", "2*h100-sxm", "h200", "l40s"]
    path = tmp_path / "pool.yaml"
    path.write_text(
        "runners:\n"
        + "".join(f"  - {{name: c{i}, labels: [x], gpus: '{c}'}}\n" for i, c in enumerate(cards))
    )
    pool = load_pool(path)
    facts = [
        ItemFact(f"t{i}", Requirement(vram_bytes=(i % 120 + 1) * 10**9, count=1 + i % 2), True)
        for i in range(2000)
    ]
    result = make_plan(pool, facts)
    assert len(result.items) == 2000 and result.orphans  # > 85.5 GB on two cards: none can


def test_the_matrix_never_has_an_empty_shard_or_an_idle_class(tmp_path: Path) -> None:
    from pytest_gpufit.fleet.plan import idle_lines, matrix

    path = tmp_path / "pool.yaml"
    path.write_text(
        "runners:\n"
        "  - {name: big, labels: [x], gpus: h200, shards: 5}\n"
        "  - {name: small, labels: [y], gpus: t4, shards: 2}\n"
    )
    pool = load_pool(path)
    facts = [ItemFact(f"t{i}", Requirement(vram_bytes=100 * 10**9), True) for i in range(3)]
    result = make_plan(pool, facts)
    entries = [(e["runner"], e["shard"], e["shards"]) for e in matrix(result)["include"]]
    assert entries == [("big", 1, 3), ("big", 2, 3), ("big", 3, 3)]
    assert idle_lines(result) == [
        "gpufit plan: class 'big' has 3 item(s): 3 shard(s), not 5",
        "gpufit plan: class 'small' gets no item: no job for it",
    ]


LATE_CONFTEST = """
import pytest

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.name == "test_late":
            item.add_marker(pytest.mark.requires_gpu(count=2))
"""


def test_marks_added_after_gpufit_read_them_fail_the_plan(pytester: pytest.Pytester) -> None:
    """A trylast hook marks test_late after gpufit's collection hook: the plan and the gate
    jobs would place it as ungated (on the first, one-GPU class, where it fails for want of a
    second GPU), never on the class that can run it. The plan says so instead."""
    pytester.makepyfile(
        test_x="""
import pytest

@pytest.mark.requires_gpu(count=2)
def test_two(): pass

def test_late(): pass
"""
    )
    pytester.makefile(".yaml", **{"gpufit-runners": POOL})
    pytester.makeconftest(LATE_CONFTEST)
    result = plan(pytester, "--runners", "gpufit-runners.yaml", ".")
    assert result.ret == 2, result.stdout.str() + result.stderr.str()
    err = result.stderr.str()
    assert "1 item(s) got gpufit marks after gpufit read them" in err
    assert "test_x.py::test_late" in err and "test_x.py::test_two" not in err
    assert "Traceback" not in err
    # Marks added by a hook that is not trylast are read in time: a plan.
    pytester.makeconftest(LATE_CONFTEST.replace("@pytest.hookimpl(trylast=True)\n", ""))
    assert plan(pytester, "--runners", "gpufit-runners.yaml", ".").ret == 0


def test_more_jobs_than_a_github_matrix_runs_is_an_error(pytester: pytest.Pytester) -> None:
    """GitHub runs at most 256 jobs of a matrix: two classes of 200 shards each must say so, not
    emit a matrix whose workflow then fails (or runs part of the gate)."""
    pytester.makepyfile(
        test_many="import pytest\n"
        + "\n".join(f"@pytest.mark.requires_vram(1)\ndef test_{i}(): pass\n" for i in range(300))
    )
    pool = (
        "runners:\n"
        "  - {name: h, labels: [x], gpus: h100-sxm, shards: 200}\n"
        "  - {name: g, labels: [y], gpus: h200, shards: 200}\n"
    )
    pytester.makefile(".yaml", **{"gpufit-runners": pool})
    result = plan(pytester, "--runners", "gpufit-runners.yaml", "--format", "github-matrix")
    assert result.ret == 2
    result.stderr.fnmatch_lines(["*needs 400 gate jobs; a GitHub Actions matrix runs at most 256*"])


FIT_TESTS = """
from pytest_gpufit import requires_fit

@requires_fit("qwen3-30b-a3b", dtype="bf16", gpus=2, engine="vllm")
def test_qwen_tp2(): pass

@requires_fit("qwen3-30b-a3b", dtype="fp8")
def test_qwen_fp8(): pass
"""


def test_requires_fit_is_planned_not_a_traceback(pytester: pytest.Pytester) -> None:
    # gpufit plan imported a module that had been removed: every requires_fit test crashed it.
    pytester.makepyfile(test_fit=FIT_TESTS)
    pytester.makefile(".yaml", **{"gpufit-runners": POOL})
    result = plan(pytester, "--runners", "gpufit-runners.yaml", "test_fit.py")
    out, err = result.stdout.str(), result.stderr.str()
    assert result.ret == 0, out + err
    assert "Traceback" not in out + err
    assert "2 items (2 gated, 0 ungated)" in out
    assert "pro6000 cannot run:" in out and "needs 2 GPUs; found 1" in out
    assert "h100x2   2*h100-sxm                -       2       2     2      0" in out, out
    # A gate job of the class plans the same way inside pytest.
    job = pytester.runpytest(
        "--gpufit-runner=h100x2", "--gpufit-simulate=2*h100-sxm", "-rs", "test_fit.py"
    )
    assert job.ret == 0, job.stdout.str()
    job.assert_outcomes(skipped=2)
    assert "INTERNALERROR" not in job.stdout.str()


def test_the_separator_may_follow_the_paths(project: pytest.Pytester) -> None:
    # `-- -k ...` after the paths reached pytest as a literal "--": "file not found: -k".
    args = ("--runners", "gpufit-runners.yaml", "test_fleet.py", "--", "-k", "not huge")
    result = plan(project, *args)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert "5 items (4 gated, 1 ungated)" in result.stdout.str()


# ---- a CPU class takes the items that need no GPU --------------------------------------------

CPU_FIRST = (
    "runners:\n  - name: cpu\n    labels: [ubuntu-latest]\n    gpus: none\n"
    + POOL.split("runners:\n", 1)[1]
)


def test_a_cpu_class_takes_the_ungated_items_and_the_table_says_so(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_fleet=TESTS)
    pytester.makefile(".yaml", **{"gpufit-runners": CPU_FIRST})
    text = plan(pytester, "--runners", "gpufit-runners.yaml", "test_fleet.py", "-k", "not huge")
    assert text.ret == 0, text.stdout.str() + text.stderr.str()
    table = text.stdout.str()
    assert "cpu      none                      -       1       1     0      1" in table, table
    assert "pro6000  1*rtx-pro-6000-blackwell  >=570   1       3     3      0" in table, table
    assert "ungated: 1 item(s) need no GPU and run once, on the CPU class 'cpu'" in table
    assert "cpu cannot run:\n  4 item(s): no GPU: a CPU class (gpus: none)" in table
    matrix = plan(
        pytester, "--runners", "gpufit-runners.yaml", "--format", "github-matrix", "--",
        "test_fleet.py", "-k", "not huge",
    )  # fmt: skip
    include = json.loads(matrix.stdout.str())["include"]
    assert [(e["runner"], e["gpus"], e["expect"]) for e in include][:2] == [
        ("cpu", "none", "count>=0"),
        ("pro6000", "1*rtx-pro-6000-blackwell", include[1]["expect"]),
    ]


def test_without_a_cpu_class_the_table_says_the_ungated_items_take_the_first_class(
    project: pytest.Pytester,
) -> None:
    text = plan(project, "--runners", "gpufit-runners.yaml", "test_fleet.py", "-k", "not huge")
    assert (
        "ungated: 1 item(s) need no GPU and run once, on the first class 'pro6000' (no CPU "
        "class in the pool: add one with gpus: none to keep them off it)"
    ) in text.stdout.str()


def test_an_orphaned_gate_is_kept_on_the_first_gpu_class_not_the_cpu_class(
    tmp_path: Path,
) -> None:
    pool_file = tmp_path / "gpufit-runners.yaml"
    pool_file.write_text(CPU_FIRST)
    pool = load_pool(pool_file)
    huge = ItemFact("t.py::test_huge", Requirement(vram_bytes=500 * 10**9), True)
    plain = ItemFact("t.py::test_plain", None, False)
    made = make_plan(pool, [huge, plain])
    assert made.orphans[0].nodeid == "t.py::test_huge"
    assert made.keeps("pro6000") == {"t.py::test_huge"}
    assert made.keeps("cpu") == {"t.py::test_plain"}
    assert made.why_not(made.items[0], "cpu") == (
        "orphaned gate: no class can run it; kept on the first GPU class 'pro6000'"
    )
