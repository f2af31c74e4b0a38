"""The GPU tier's A/B step (``GPUFIT_TIER_AB=1`` of scripts/gpu-tier.sh): side B's venv
(scripts/gpu_tier_ab_env.py), the summary's A/B section (scripts/gpu_tier_summary.py), the
switches, and the step itself run dry on the CPU with a real venv and a real ``gpufit ab``.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ab_envs import build_wheel

from pytest_gpufit.errors import GpufitError

ROOT = Path(__file__).parents[1]
SCRIPTS = ROOT / "scripts"


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ab_env = _load("gpu_tier_ab_env")
summary = _load("gpu_tier_summary")


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args], cwd=ROOT, capture_output=True, text=True, env=env, check=False, timeout=300
    )


def _tier_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFIT_")}
    return {**env, "PYTHON": sys.executable, **extra}


@pytest.mark.parametrize("module", [ab_env, summary], ids=["ab_env", "summary"])
def test_the_scripts_doctests_hold(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ---- side B: pure units ------------------------------------------------------------------


def test_a_wheel_name_gives_its_distribution_normalized() -> None:
    wheel = ab_env.parse_wheel("huggingface_hub-1.31.0-py3-none-any.whl", ".whl-ab")
    assert (wheel.name, wheel.version) == ("huggingface-hub", "1.31.0")
    with pytest.raises(GpufitError, match=r"\.whl-ab/notes\.txt: not a wheel"):
        ab_env.parse_wheel("notes.txt", ".whl-ab")


def test_a_dotted_distribution_at_a_s_own_version_plans_no_change() -> None:
    """A's probe names it zope.interface, the wheel zope_interface or zope.interface: one name
    (the attack found it planned as an A/B, then refused as measured A/A)."""
    wheel = ab_env.parse_wheel("zope.interface-7.0-cp311-cp311-linux_x86_64.whl", ".whl-ab")
    assert ab_env.planned_changes({"zope.interface": "7.0"}, [wheel]) == []
    assert ab_env.planned_changes({"zope.interface": "6.0"}, [wheel]) == [
        "zope-interface 6.0 -> 7.0"
    ]


def test_two_versions_of_one_package_are_refused_naming_both() -> None:
    files = ["transformers-5.24.0-py3-none-any.whl", "transformers-5.17.0-py3-none-any.whl"]
    with pytest.raises(GpufitError, match=r"two versions of transformers \(5\.17\.0 and 5\.24"):
        ab_env.carried(files, ".whl-ab")


def test_a_carried_wheel_of_as_own_version_leaves_an_a_a() -> None:
    wheels = ab_env.carried(["transformers-5.24.0-py3-none-any.whl"], "d")
    assert ab_env.kind(ab_env.planned_changes({"transformers": "5.24.0"}, wheels)) == "A/A"
    changes = ab_env.planned_changes({"transformers": "5.25.0"}, wheels)
    assert changes == ["transformers 5.25.0 -> 5.24.0"]
    assert ab_env.kind(changes) == "A/B"
    assert ab_env.kind(ab_env.planned_changes({}, ())) == "A/A"


def test_the_pth_adds_as_folders_in_order_and_refuses_none() -> None:
    text = ab_env.pth_text(["/a/site-packages", "/b/dist-packages"])
    assert text.splitlines() == [
        "import site; site.addsitedir('/a/site-packages')",
        "import site; site.addsitedir('/b/dist-packages')",
    ]
    with pytest.raises(GpufitError, match="no site-packages"):
        ab_env.pth_text([])


def test_the_dry_suite_is_the_gpu_suite_on_the_cpu_with_the_tiny_model() -> None:
    gpu = yaml.safe_load((ROOT / "tests" / "gpu" / "ab.gpufit.yaml").read_text())
    dry = ab_env.dry_suite(
        yaml.safe_load((ROOT / "tests" / "gpu" / "ab.gpufit.yaml").read_text()), "/m"
    )
    assert [t["name"] for t in dry["targets"]] == [t["name"] for t in gpu["targets"]]
    for g, d in zip(gpu["targets"], dry["targets"], strict=True):
        assert (d["model"], d["device"]) == ("/m", "cpu")
        assert set(d["checks"]) == set(g["checks"])  # the same checks, so the same metrics
        assert d["checks"]["throughput"]["new_tokens"] < g["checks"]["throughput"]["new_tokens"]
    assert dry["suite"] == f"{gpu['suite']}-dry-run"


# ---- side B: the real script ---------------------------------------------------------------


def test_a_bad_wheel_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    wheels = tmp_path / "whl-ab"
    wheels.mkdir()
    (wheels / "transformers.tar.gz").write_text("")
    done = _script(
        sys.executable,
        "scripts/gpu_tier_ab_env.py",
        "make",
        str(tmp_path / "v"),
        "--wheels",
        str(wheels),
    )
    assert done.returncode == 2
    assert done.stderr.startswith("gpu_tier_ab_env: ") and "Traceback" not in done.stderr
    assert "transformers.tar.gz: not a wheel" in done.stderr
    assert not (tmp_path / "v").exists()


def test_side_b_without_wheels_is_an_a_a_venv_onto_a(tmp_path: Path) -> None:
    report = tmp_path / "ab-env.json"
    done = _script(
        sys.executable,
        "scripts/gpu_tier_ab_env.py",
        "make",
        str(tmp_path / "v"),
        "--wheels",
        str(tmp_path / "absent"),
        "--json",
        str(report),
    )
    assert done.returncode == 0, done.stderr
    b = done.stdout.strip().splitlines()[-1]
    assert b == str(tmp_path / "v" / "bin" / "python")
    plan = json.loads(report.read_text())
    assert (plan["kind"], plan["changes"], plan["wheels"]) == ("A/A", [], [])
    seen = _script(b, "-c", "import sys, pytest_gpufit, transformers; print(sys.prefix)")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.strip() == str(tmp_path / "v")  # its own environment, A's packages
    again = _script(sys.executable, "scripts/gpu_tier_ab_env.py", "make", str(tmp_path / "v"))
    assert again.returncode == 2 and "already there" in again.stderr


def test_a_carried_wheel_goes_into_b_ahead_of_a_an_a_b(tmp_path: Path) -> None:
    wheels = tmp_path / "whl-ab"
    wheels.mkdir()
    build_wheel(wheels, "2.0", 1.1)  # slowpkg 2.0, which A does not have
    report = tmp_path / "ab-env.json"
    done = _script(
        sys.executable,
        "scripts/gpu_tier_ab_env.py",
        "make",
        str(tmp_path / "v"),
        "--wheels",
        str(wheels),
        "--json",
        str(report),
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads(report.read_text())
    assert plan["kind"] == "A/B" and plan["changes"] == ["slowpkg none -> 2.0"]
    b = done.stdout.strip().splitlines()[-1]
    seen = _script(b, "-c", "import slowpkg; print(slowpkg.__version__)")
    assert seen.stdout.strip() == "2.0"
    assert _script(sys.executable, "-c", "import slowpkg").returncode != 0  # A untouched


# ---- the summary's A/B section ---------------------------------------------------------------


def _ab(verdict: str, b_transformers: str = "5.25.0", low: float | None = 0.97) -> dict[str, Any]:
    fingerprint = {"transformers_version": "5.25.0", "packages": {"transformers": "5.25.0"}}
    other = {"transformers_version": b_transformers, "packages": {"transformers": b_transformers}}
    metric = {
        "test": "ab.gpufit.yaml::qwen3-0.6b::throughput",
        "metric": "decode_tok_s",
        "ratio": 0.9,
        "low": low,
        "high": None if low is None else 0.93,
        "confidence": 0.95,
        "verdict": verdict,
    }
    return {
        "a": {"python": "/a/python", "fingerprint": fingerprint},
        "b": {"python": "/b/python", "fingerprint": other},
        "rounds": 6,
        "max_rounds": 6,
        "seconds": 120.0,
        "metrics": [metric],
        "texts": [],
        "verdict": verdict,
        "exit_code": 1,
    }


def test_an_a_a_that_regressed_is_a_false_alarm() -> None:
    lines, alarm = summary.ab_lines(_ab("regressed"))
    assert alarm
    assert lines[0].startswith("A/B (A/A): the same packages on both sides")
    row = next(line for line in lines if "decode tok/s" in line)
    assert "[0.970, 0.930] at 95.0%" in row and row.endswith("regressed  FALSE ALARM (an A/A)")
    assert lines[-1].startswith("  FALSE ALARM: B holds A's very packages")


def test_an_a_b_that_regressed_is_a_finding_not_an_alarm() -> None:
    lines, alarm = summary.ab_lines(_ab("regressed", b_transformers="5.24.0"))
    assert not alarm and not any("FALSE ALARM" in line for line in lines)
    assert lines[0] == "A/B (A/B): transformers 5.25.0 -> 5.24.0"


@pytest.mark.parametrize("verdict", ["same", "inconclusive"])
def test_an_a_a_that_finds_nothing_raises_no_alarm(verdict: str) -> None:
    lines, fails = summary.ab_lines(_ab(verdict))
    assert not fails
    assert not any("FALSE ALARM" in line or "NO EVIDENCE" in line for line in lines)


def test_a_metric_without_an_interval_is_no_evidence_and_fails_the_step() -> None:
    lines, fails = summary.ab_lines(_ab("inconclusive", low=None))
    assert fails
    assert "no interval (too few rounds)" in next(line for line in lines if "decode" in line)
    assert lines[-1] == (
        "  NO EVIDENCE: a metric has no interval (6 rounds give the first) (the step fails)"
    )


def test_an_a_b_whose_test_fails_on_b_is_a_finding_an_a_a_a_false_alarm() -> None:
    differ = [{"test": "t.py::y", "a": {"passed": 6}, "b": {"failed": 6}, "worse": True}]
    lines, fails = summary.ab_lines(
        {**_ab("regressed", b_transformers="5.24.0"), "outcomes": differ}
    )
    assert not fails
    assert "  outcomes differ: y: A {'passed': 6}, B {'failed': 6}" in lines
    lines, fails = summary.ab_lines({**_ab("same"), "outcomes": differ, "verdict": "regressed"})
    assert fails and lines[-1].startswith("  FALSE ALARM: B holds A's very packages")


def test_no_result_and_a_planned_kind_gpufit_ab_did_not_see_are_said() -> None:
    assert summary.ab_lines(None) == (
        ["A/B: no result (ab.json is missing or unreadable; see ab.txt)"],
        False,
    )
    lines, _ = summary.ab_lines(_ab("same"), {"kind": "A/B"})
    assert "  note: side B was made as an A/B, gpufit ab measured an A/A" in lines


def test_the_ab_mode_fails_on_a_false_alarm_and_on_no_result(tmp_path: Path) -> None:
    command = [sys.executable, "scripts/gpu_tier_summary.py", str(tmp_path), "--ab"]
    assert _script(*command).returncode == 1  # no ab.json: the step broke
    (tmp_path / "ab.json").write_text(json.dumps(_ab("same")))
    assert _script(*command).returncode == 0
    (tmp_path / "ab.json").write_text(json.dumps(_ab("regressed")))
    done = _script(*command)
    assert done.returncode == 1 and "FALSE ALARM" in done.stdout


def test_the_bundle_holds_the_ab_result_not_side_bs_venv(tmp_path: Path) -> None:
    (tmp_path / "ab.json").write_text(json.dumps(_ab("same")))
    venv = tmp_path / "ab-venv" / "lib" / "site-packages" / "transformers"
    venv.mkdir(parents=True)
    (venv / "__init__.py").write_text("x = 1\n")
    summary.bundle(tmp_path, tmp_path / "bundle.json")
    files = json.loads((tmp_path / "bundle.json").read_text())
    assert files["ab.json"]["verdict"] == "same"
    assert not [name for name in files if name.startswith("ab-venv")]


# ---- the switches ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "said"),
    [
        ({"GPUFIT_TIER_AB": "yes"}, "GPUFIT_TIER_AB must be 0 or 1, not 'yes'"),
        ({"GPUFIT_TIER_AB_ONLY": "2"}, "GPUFIT_TIER_AB_ONLY must be 0 or 1, not '2'"),
        ({"GPUFIT_TIER_AB_ROUNDS": "0"}, "GPUFIT_TIER_AB_ROUNDS must be a whole number"),
        ({"GPUFIT_TIER_AB_ROUNDS": "six"}, "not 'six'"),
        ({"GPUFIT_TIER_AB_ROUNDS": "00"}, "GPUFIT_TIER_AB_ROUNDS must be a whole number"),
        ({"GPUFIT_TIER_AB_ONLY": "1", "GPUFIT_TIER_SERVE_ONLY": "1"}, "set one of them"),
    ],
)
def test_bad_switches_stop_the_tier_before_it_runs(
    tmp_path: Path, variables: dict[str, str], said: str
) -> None:
    done = _script("scripts/gpu-tier.sh", str(tmp_path), env=_tier_env(**variables))
    assert done.returncode == 2
    assert said in done.stderr and done.stdout == ""


@pytest.mark.parametrize("version", ["latest", "5.24.0;rm -rf x", "5"])
def test_a_bad_ab_version_stops_the_wheels_script_before_any_download(version: str) -> None:
    done = _script(
        "scripts/gpu-tier-wheels.sh", "/nonexistent/dir", env=_tier_env(GPUFIT_WHEELS_AB=version)
    )
    assert done.returncode == 2
    assert "GPUFIT_WHEELS_AB must be a transformers version such as 5.24.0" in done.stderr


# ---- the step itself, dry -----------------------------------------------------------------------


def test_the_ab_step_runs_dry_a_real_a_a_with_gpufit_ab(tmp_path: Path) -> None:
    """Probe + A/B step (AB_ONLY), one round: a real venv, a real gpufit ab of two pytest
    sessions on the tiny model (about 30 s on dev-cpu); one round gives no interval, so every
    metric is inconclusive, the A/A raises no alarm, and the step fails: no evidence."""
    pytest.importorskip("transformers")
    out = tmp_path / "tier"
    variables = {"GPUFIT_TIER_DRY_RUN": "1", "GPUFIT_TIER_AB_ONLY": "1"}
    # Not the checkout's .whl-ab, which a developer may hold: this test asks for an A/A.
    variables["GPUFIT_TIER_AB_WHEELS"] = str(tmp_path / "no-wheels")
    done = _script(
        "scripts/gpu-tier.sh", str(out), env=_tier_env(GPUFIT_TIER_AB_ROUNDS="1", **variables)
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "GPUFIT_TIER_AB_ROUNDS=1 gives no interval" in done.stderr
    assert "== A/B: gpufit ab of two environments on the CPU (dry run)" in done.stdout
    text = (out / "summary.txt").read_text()
    assert "A/B (A/A): the same packages on both sides" in text
    assert "FALSE ALARM" not in text
    assert (
        "  NO EVIDENCE: a metric has no interval (6 rounds give the first) (the step fails)" in text
    )
    assert "qwen3-0.6b::throughput   decode tok/s" in text
    data = json.loads((out / "ab.json").read_text())
    assert data["rounds"] == 1 and {r["side"] for r in data["runs"]} == {"A", "B"}
    assert data["b"]["python"] == str(out / "ab-venv" / "bin" / "python")
    assert not list(out.glob("fit-*.json"))  # AB_ONLY: the probe and the A/B step alone
    bundled = json.loads((out / "bundle.json").read_text())
    assert bundled["ab-env.json"]["kind"] == "A/A" and "ab.json" in bundled
