"""``gpufit bisect`` on real environments (issue 20, item 2): wheels made here
(``bisect_world``), virtual environments built by uv from that wheel folder, and a real judge
that times a plain pytest test under each interpreter. The environments are shared by the
tests of this file through the work folder (kept by digest, as for a user's second run)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bisect_world import TimingJudge, make_wheel, make_wheels

from pytest_gpufit.ab.bisect import change_set, parse_requirements
from pytest_gpufit.ab.bisect_envs import Builder, find_uv, self_requirement
from pytest_gpufit.ab.bisect_run import Sides, read_sides, run_bisect
from pytest_gpufit.cli import main

pytestmark = pytest.mark.skipif(find_uv() is None, reason="uv is not installed (the dev extra)")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bisect")
    make_wheels(root / "wheels")
    (root / "a.txt").write_text("pkg-a==1.0\npkg-b==1.0\npkg-c==1.0\n")
    (root / "b.txt").write_text("pkg-a==2.0\npkg-b==2.0\npkg-c==2.0\n")
    return root


def bisect(world: Path, sides: Sides, judge: TimingJudge, **options: object) -> tuple[int, str]:
    lines: list[str] = []
    code = run_bisect(
        sides,
        work=world / "work",
        find_links=[str(world / "wheels")],
        judge=judge,
        out=lines.append,
        json_path=str(world / "bisect.json"),
        **options,  # type: ignore[arg-type]
    )
    return code, "\n".join(lines)


def installed(python: str) -> dict[str, str]:
    script = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(done.stdout)
    return {k: v for k, v in found.items() if k.startswith("pkg-")}


def test_three_changes_the_slow_one_is_named(world: Path) -> None:
    judge = TimingJudge(world / "judge-1")
    sides = Sides(str(world / "a.txt"), None, str(world / "b.txt"))
    code, text = bisect(world, sides, judge)
    assert code == 1, text
    assert "culprit: pkg-b 1.0 -> 2.0" in text
    assert "environments: uv," in text
    data = json.loads((world / "bisect.json").read_text())
    assert data["outcome"] == "culprit" and data["strategy"] == "one at a time"
    (culprit,) = data["culprits"]
    assert culprit["changes"] == [{"package": "pkg-b", "a": "1.0", "b": "2.0"}]
    with_it, without_it = culprit["with"]["metrics"][0], culprit["without"]["metrics"][0]
    # pkg_b 2.0 sleeps 5x longer: 10 ms -> 50 ms of a 30 ms test, 70/30 = 2.3x
    assert with_it["verdict"] == "regressed" and with_it["low"] > 1.5
    assert without_it["verdict"] == "same" and without_it["high"] < 1.5
    # the environments hold what the steps say: A + pkg-b has pkg-b 2.0 and the rest of A
    steps = {s["step"]: s for s in data["steps"]}
    assert set(steps) == {"A vs B", "A + pkg-a", "A + pkg-b", "A + pkg-c", "B - pkg-b"}
    assert installed(steps["A + pkg-b"]["python"]) == {
        "pkg-a": "1.0",
        "pkg-b": "2.0",
        "pkg-c": "1.0",
    }
    assert installed(steps["B - pkg-b"]["python"]) == {
        "pkg-a": "2.0",
        "pkg-b": "1.0",
        "pkg-c": "2.0",
    }
    assert len(judge.calls) == 5
    # every step against A itself, and every environment has pytest-gpufit (ab needs it)
    assert {a for a, _ in judge.calls} == {judge.calls[0][0]}
    check = [judge.calls[0][1], "-c", "import pytest_gpufit.ab.bisect"]
    assert subprocess.run(check, check=False).returncode == 0


def test_changes_that_cannot_be_installed_apart_are_grouped_and_said(world: Path) -> None:
    # B is A with three --change items; pkg-d 2.0 pins pkg-b==2.0, so the installer cannot
    # put pkg-d 2.0 beside pkg-b 1.0 (A's): the two move as one group, and the answer says so.
    # A and A + pkg-a are the first test's environments, reused by their digest.
    judge = TimingJudge(world / "judge-2")
    changes = ("pkg-a==2.0", "pkg-b==2.0", "pkg-d==2.0")
    sides = Sides(str(world / "a.txt"), None, None, changes)
    code, text = bisect(world, sides, judge)
    assert code == 1, text
    said = r"culprit: group \[pkg-b 1.0 -> 2.0, pkg-d \(added\) 2.0\] \(installs only together: "
    assert re.search(said + r"Because .*pkg-d[>=]=2.0 depends on pkg-b==2.0", text), text
    data = json.loads((world / "bisect.json").read_text())
    assert [sorted(c["package"] for c in u["changes"]) for u in data["units"]] == [
        ["pkg-a"],
        ["pkg-b", "pkg-d"],
    ]
    assert data["culprits"][0]["with"]["verdict"] == "regressed"
    assert data["culprits"][0]["without"]["verdict"] == "same"
    # no step split the group
    for step in data["steps"]:
        assert len({"pkg-b", "pkg-d"} & set(step["applied"])) != 1
    # A vs B, A + pkg-a, A + the group; B - the group is A + pkg-a's environment, judged once
    assert len(judge.calls) == 3


def test_an_interpreter_as_a_is_read_from_its_freeze(world: Path) -> None:
    """--a-python: A's pins are what the interpreter has (uv's freeze); pytest-gpufit, which
    bisect installs itself, is left out."""
    a_txt = parse_requirements((world / "a.txt").read_text(), "a.txt")
    wanted = "".join(f"{line}\n" for line in a_txt.lines())
    (env,) = [p for p in (world / "work" / "envs").glob("*.txt") if p.read_text() == wanted]
    a_python = str(env.with_suffix("") / "bin" / "python")
    a, b = read_sides(Sides(None, a_python, None, ("pkg-b==2.0",)), find_uv())
    assert {n: p.line for n, p in a.pins.items() if n.startswith("pkg-")} == {
        n: p.line for n, p in a_txt.pins.items()
    }
    assert "pytest" in a.pins and "pytest-gpufit" not in a.pins
    assert any("pytest-gpufit left out" in note for note in a.notes)
    assert [c.describe() for c in change_set(a, b)] == ["pkg-b 1.0 -> 2.0"]


def test_without_uv_pip_builds_the_environments(world: Path) -> None:
    """Where uv is absent: python -m venv and pip, the same environment, said as slower."""
    (wheel,) = self_requirement(world / "work", find_uv())  # the wheel the tests above built
    wheels = (str(world / "wheels"),)
    builder = Builder(world / "work-pip", sys.executable, None, wheels, gpufit=(wheel,))
    assert builder.tool == "pip (uv not found: slower)"
    python = builder.python(["pkg-a==1.0", "pkg-c==2.0"])
    assert installed(python) == {"pkg-a": "1.0", "pkg-c": "2.0"}
    check = [python, "-c", "import pytest_gpufit, pytest"]
    assert subprocess.run(check, check=False).returncode == 0
    ready = Path(python).parent.parent / "gpufit-bisect.json"
    made = ready.stat().st_mtime_ns
    assert builder.python(["pkg-c==2.0", "pkg-a==1.0"]) == python  # kept by its digest
    assert ready.stat().st_mtime_ns == made


def test_a_wheel_that_does_not_install_is_bad_input(
    world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheels = world / "broken-wheels"
    wheels.mkdir()
    make_wheel(wheels, "pkg_e", "1.0", "", [])
    broken = wheels / "pkg_e-2.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip archive")
    args = ["bisect", "test_work.py", "--a-requirements", str(world / "a.txt"), "--find-links"]
    args += [str(world / "wheels"), "--find-links", str(wheels), "--work", str(world / "work")]
    code = main([*args, "--change", "pkg-e==2.0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("gpufit: error: B does not install: ")
    assert "pkg-e" in err or "pkg_e" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--a-requirements", "missing.txt", "--change", "x==1"], "--a-requirements missing.txt: "
         "no such file"),
        (["--a-requirements", "{a}", "--b-requirements", "{a}"], "pin the same packages at the "
         "same versions: nothing to bisect"),
        (["--a-requirements", "{a}", "--change", "pkg-b>=2"], "--change #1: 'pkg-b>=2': not one "
         "exact version"),
        (["--a-python", "/nonexistent/bin/python", "--change", "x==1"], "--a-python "
         "/nonexistent/bin/python: no such interpreter"),
        (["--a-requirements", "{a}", "--change", "pkg-b==2.0", "--find-links", "nowhere"],
         "--find-links nowhere: no such folder"),
        (["--a-requirements", "{a}", "--change", "pkg-b==2.0", "--json", "no/x.json"],
         "--json no/x.json: no such folder no"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(
    world: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.replace("{a}", str(world / "a.txt")) for a in args]
    code = main(["bisect", "x.yaml", "--work", str(world / "work-bad"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("gpufit: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (world / "work-bad").exists()  # refused before building anything


def test_the_command_is_on_the_gpufit_script() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_gpufit.cli", "bisect", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert "--a-requirements" in done.stdout and "--change" in done.stdout


def has_gpufit_ab() -> bool:
    command = [sys.executable, "-m", "pytest_gpufit.cli", "ab", "--help"]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


# The target `gpufit ab` measures: a plain pytest test that records a figure through gpufit's
# measurement property (what suite checks record), as any test may: the rate of one pass over
# every pkg_* work() the environment has, the best of 3 (wall time: the packages sleep).
AB_TARGET = """import importlib, json, time


def test_work(record_property):
    modules = []
    for name in ("pkg_a", "pkg_b", "pkg_c", "pkg_d"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    times = []
    for _ in range(3):
        began = time.perf_counter()
        for module in modules:
            module.work()
        times.append(time.perf_counter() - began)
    entry = {
        "suite": "bisect-demo", "target": "pkgs", "check": "throughput", "dtype": "-",
        "device": "cpu", "gpu": "cpu", "backend": "python",
        "metrics": {"decode_tok_s": 1.0 / min(times)},
    }
    record_property("gpufit_measurement", json.dumps(entry))
"""


NO_AB = "no `gpufit ab` command (helper ab, issue 20.1): bisect's steps need it"


@pytest.mark.skipif(not has_gpufit_ab(), reason=NO_AB)
def test_bisect_judged_by_gpufit_ab_names_the_slow_package(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: the step is a real `gpufit ab` run (AB_CONTRACT's command and JSON). One
    change, so one step (6 rounds of 2 pytest sessions): the search over several steps is the
    tests above, on the timing judge."""
    (tmp_path / "test_target.py").write_text(AB_TARGET)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bisect.json"
    args = ["bisect", "test_target.py", "--a-requirements", str(world / "a.txt")]
    args += ["--change", "pkg-b==2.0", "--rounds", "6", "--tolerance", "10%"]
    args += ["--find-links", str(world / "wheels"), "--work", str(world / "work")]
    code = main([*args, "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 1, text
    assert "culprit: pkg-b 1.0 -> 2.0" in text
    assert "without it: A itself (the only change)" in text
    data = json.loads(out.read_text())
    (culprit,) = data["culprits"]
    (with_it,) = culprit["with"]["metrics"]
    assert (with_it["test"], with_it["metric"]) == ("test_target.py::test_work", "decode_tok_s")
    assert with_it["verdict"] == "regressed"
    # pkg_b 2.0 sleeps 5x longer: 30 ms a pass -> 70 ms, a rate of 0.43x A's
    assert with_it["low"] <= with_it["ratio"] <= with_it["high"] < 0.8
    (step,) = data["steps"]  # its judgement is the ab report it read, A against B
    report = json.loads(Path(step["source"]).read_text())
    assert report["schema"] == "gpufit-ab/1" and report["rounds"] <= 6
    assert report["b"]["vars"]["python"] == step["python"]
    assert report["a"]["vars"]["python"] != step["python"]
    assert report["metrics"][0]["ratio"] == with_it["ratio"]
    assert "--tolerance 10%" in Path(step["source"]).with_suffix(".log").read_text()
