"""Fleet health: runs of one GPU model from many hosts in one store, each host against the
fleet median (``gpufit baseline fleet``, ``--gpufit-fleet-tolerance``), with the host facts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit.baseline import BaselineSession, Store, fingerprint
from pytest_gpufit.baseline.fleet import judge_fleet, latest_per_host, suspicious_facts
from pytest_gpufit.baseline.session import FleetFailure
from pytest_gpufit.baseline.setup import model_config
from pytest_gpufit.fit.spec import resolve_model
from pytest_gpufit.hardware.catalog import catalog_gpu
from pytest_gpufit.hardware.records import Environment, Gpu

GPUFIT = shutil.which("gpufit") or str(Path(sys.executable).parent / "gpufit")
H100 = "NVIDIA H100 80GB HBM3"
NODE = "s.gpufit.yaml::t::fits"
GOOD_FACTS = dict(
    pcie_link_gen_current=1,  # idle: downtrained, which is normal
    pcie_link_gen_max=5,
    pcie_link_width_current=16,
    pcie_link_width_max=16,
    clock_event_reasons=("gpu_idle",),
    power_limit_mw=700000,
    power_limit_default_mw=700000,
)
SLOW_FACTS = dict(
    GOOD_FACTS,
    pcie_link_gen_max=4,
    pcie_link_width_current=8,
    pcie_link_width_max=8,
    clock_event_reasons=("hw_thermal_slowdown",),
    power_limit_mw=400000,
)


# What a session records its figures were measured with (SUITE's fits check, below).
SETUP = {
    "check": "fits",
    "params": {},
    "target": {
        "model": "Qwen__Qwen3-0.6B",
        "weights": "random",
        "dtype": "bf16",
        "backend": "transformers",
        "device": "cuda",
        "endpoint": None,
        "served_model": None,
        "gpus": 1,
        # What the suite's check records (model_config: the shipped config's digest).
        "model_config": model_config(resolve_model("qwen3-0.6b", Path("."))),
        "seed": 0,
        "trust_remote_code": False,
    },
    "judging": [],
}


def _gpu(**facts: Any) -> Gpu:
    import dataclasses

    gpu = dataclasses.replace(catalog_gpu("h100-sxm"), name=H100, simulated=False)
    return dataclasses.replace(gpu, **facts)


def _save(store: Store, host: str, decode: float, facts: dict[str, Any] | None = None) -> str:
    fp = fingerprint(
        _gpu(**(facts or GOOD_FACTS)), Environment(driver_version="570.86.15"), host=host
    )
    results = {NODE: {"outcome": "passed", "metrics": {"decode_tok_s": decode}, "setup": SETUP}}
    return store.write_run(fp, "s", results, accept=host == "node-a")


def _fleet(store: Store, slow: float = 60.0) -> None:
    _save(store, "node-a", 100.0)
    _save(store, "node-b", 96.0)
    _save(store, "node-b", 104.0)  # node-b's latest run counts, not its first
    _save(store, "node-c", slow, SLOW_FACTS)


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPUFIT_")}
    return subprocess.run(
        [GPUFIT, "baseline", *args], cwd=cwd, capture_output=True, text=True, env=environ
    )


# ---- the store and the fingerprint ----------------------------------------------------------


def test_runs_from_many_hosts_meet_in_one_store_and_the_latest_per_host_counts(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    _fleet(store)
    folders = {p.parent.parent.name for p in tmp_path.rglob("runs/*.json")}
    assert folders == {"s"}, "the host is a fingerprint field, not a key of the store"
    records = [(str(i.path), store.read(i.path)) for i in store.runs()]
    runs, unnamed = latest_per_host(records)
    assert [(r.host, r.values[NODE]["decode_tok_s"]) for r in runs] == [
        ("node-a", 100.0),
        ("node-b", 104.0),
        ("node-c", 60.0),
    ]
    assert unnamed == 0
    assert runs[2].fingerprint["host_facts"]["pcie_link_width_max"] == 8


def test_older_records_without_a_host_stay_readable_and_are_counted_apart(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    run = _save(store, "node-a", 100.0)
    path = store.find(run)
    record = json.loads(path.read_text())
    for key in ("host", "host_facts"):
        del record["fingerprint"][key]  # a record saved before hosts were recorded
    path.write_text(json.dumps(record))
    assert store.accepted(H100, "s")["id"] == run
    runs, unnamed = latest_per_host([(str(path), store.read(path))])
    assert runs == [] and unnamed == 1


def test_host_and_host_facts_are_not_environment_changes() -> None:
    from pytest_gpufit.baseline import environment_changes

    env = Environment(driver_version="570.86.15")
    a = fingerprint(_gpu(**GOOD_FACTS), env, host="node-a").to_dict()
    c = fingerprint(_gpu(**SLOW_FACTS), env, host="node-c").to_dict()
    assert environment_changes(a, c) == []


def test_a_simulated_card_has_no_host_facts_in_the_fingerprint() -> None:
    fp = fingerprint(catalog_gpu("h100-sxm"), Environment(), host="x")
    assert fp.host_facts is None and fp.to_dict()["host"] == "x"


# ---- the gate -------------------------------------------------------------------------------


def _session(store: Store, host: str, tolerance: float | None, strict: bool) -> BaselineSession:
    return BaselineSession(
        store,
        Environment(driver_version="570.86.15"),
        (_gpu(**(SLOW_FACTS if host == "node-c" else GOOD_FACTS)),),
        host=host,
        fleet_tolerance=tolerance,
        fleet_strict=strict,
    )


def _measured(decode: float) -> dict[str, Any]:
    return {NODE: {"gpu": H100, "suite": "s", "metrics": {"decode_tok_s": decode}}}


def test_the_slow_host_fails_naming_metric_median_and_host_facts(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _save(store, "node-a", 100.0)
    _save(store, "node-b", 104.0)
    with pytest.raises(FleetFailure) as failure:
        _session(store, "node-c", 0.15, strict=False).save(_measured(60.0), accept=False)
    text = str(failure.value)
    assert "host node-c is out of line (NVIDIA H100 80GB HBM3, suite s)" in text
    assert f"{NODE}: decode tok/s 60 vs fleet median 102 of 2 other hosts (-41.2%" in text
    assert "PCIe gen1 x8 (max gen4 x8)" in text and "power limit 400 W (default 700 W)" in text
    assert "clocks held back: hw_thermal_slowdown" in text
    assert "max PCIe link gen4 x8 (other hosts: gen5 x16)" in text
    assert "driver 570.86.15" in text
    # Written first: the slow host's run is in the store for the fleet view.
    assert len([r for r in store.runs() if r.suite == "s"]) == 3


def test_a_host_in_line_passes_and_a_faster_one_is_noted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _fleet(store)
    # With two other hosts the median is their mean, which the slow node-c pulls down to
    # 82; a third one in line makes it robust: node-a then meets 101, not node-c's 60.
    _save(store, "node-d", 101.0)
    (saved,) = _session(store, "node-a", 0.15, strict=True).save(_measured(99.0), accept=False)
    assert saved.fleet_notes == ()
    (saved,) = _session(store, "node-a", 0.15, strict=True).save(_measured(150.0), accept=False)
    assert "better than the fleet" in saved.message


def test_the_median_is_of_the_other_hosts_so_a_slow_host_cannot_pull_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _save(store, "node-a", 100.0)
    _save(store, "node-b", 104.0)
    for _ in range(5):  # node-c's own earlier slow runs never count in its median
        _save(store, "node-c", 60.0, SLOW_FACTS)
    with pytest.raises(FleetFailure, match="fleet median 102 of 2 other hosts"):
        _session(store, "node-c", 0.15, strict=False).save(_measured(60.0), accept=False)


def test_lower_is_better_metrics_fail_when_higher() -> None:
    others = latest_per_host(
        [
            (
                "x",
                {
                    "id": f"r{i}",
                    "created": i,
                    "fingerprint": {"host": f"n{i}"},
                    "results": {NODE: {"outcome": "passed", "metrics": {"ttft_ms": 100.0}}},
                },
            )
            for i in range(2)
        ]
    )[0]
    slow = judge_fleet("me", H100, "s", {}, {NODE: {"ttft_ms": 130.0}}, others, 0.15, True)
    fast = judge_fleet("me", H100, "s", {}, {NODE: {"ttft_ms": 70.0}}, others, 0.15, True)
    assert "TTFT ms 130" in slow.failures[0] and fast.failures == ()


@pytest.mark.parametrize("hosts", [0, 1])
def test_too_few_other_hosts_is_said_and_fails_only_under_the_fail_policy(
    tmp_path: Path, hosts: int
) -> None:
    store = Store(tmp_path)
    for name in ("node-a", "node-b")[:hosts]:
        _save(store, name, 100.0)
    (saved,) = _session(store, "node-c", 0.15, strict=False).save(_measured(10.0), accept=False)
    assert f"no verdict, {hosts} other host" in saved.message and "2 needed" in saved.message
    with pytest.raises(FleetFailure, match=f"no verdict, {hosts} other host"):
        _session(store, "node-c", 0.15, strict=True).save(_measured(10.0), accept=False)


def test_a_check_no_other_host_measured_has_no_verdict(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _fleet(store)
    measured = {**_measured(100.0), "s.gpufit.yaml::t::new": {**_measured(1.0)[NODE]}}
    with pytest.raises(FleetFailure, match="t::new: no verdict on decode tok/s, 0 other hosts"):
        _session(store, "node-d", 0.15, strict=True).save(measured, accept=False)
    (saved,) = _session(store, "node-d", 0.15, strict=False).save(measured, accept=False)
    assert "t::new: no verdict" in saved.message


def test_a_run_without_figures_is_not_a_fleet_pass_under_the_fail_policy(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _fleet(store)
    figureless = {NODE: {"gpu": H100, "suite": "s", "metrics": {"text": "hi"}}}
    with pytest.raises(FleetFailure, match="no check of this run measured a figure"):
        _session(store, "node-d", 0.15, strict=True).save(figureless, accept=False)


def test_no_fleet_tolerance_means_no_fleet_check(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _fleet(store)
    (saved,) = _session(store, "node-c", None, strict=True).save(_measured(1.0), accept=False)
    assert saved.fleet_notes == ()


def test_save_mode_does_not_judge_the_fleet(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _fleet(store)
    (saved,) = _session(store, "node-c", 0.15, strict=True).save(_measured(1.0), accept=True)
    assert saved.fleet_notes == ()


def test_a_downtrained_idle_link_is_not_held_against_a_host() -> None:
    idle = {"host_facts": dict(GOOD_FACTS, pcie_link_gen_current=1)}
    busy = {"host_facts": dict(GOOD_FACTS, pcie_link_gen_current=5)}
    assert suspicious_facts(idle, [busy, busy]) == []


# ---- gpufit baseline fleet -----------------------------------------------------------------


def test_fleet_view_judges_each_host_with_the_interval_of_gpufit_ab(tmp_path: Path) -> None:
    # Each host's recent runs against the other hosts' recent runs (issue 20.3): node-c's four
    # runs at ~60 tok/s against eight at ~100 lie beyond 15% with 95% confidence.
    store = Store(tmp_path / "store")
    for jitter in (0.0, 1.0, -1.0, 0.5):
        _save(store, "node-a", 100.0 + jitter)
        _save(store, "node-b", 98.0 + jitter)
        _save(store, "node-c", 60.0 + jitter, SLOW_FACTS)
    out = _cli(tmp_path, "fleet", "--dir", "store")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "NVIDIA H100 80GB HBM3, suite s: 3 hosts (latest run of each; up to 20 recent" in text
    assert "host node-c (run " in text
    slow = next(line for line in text.splitlines() if "decode tok/s 60.5 (" in line)
    assert "4 runs here, 8 on other hosts: this host / the others 0.6" in slow
    assert slow.endswith("; regressed)  WORSE beyond 15%")
    fine = next(line for line in text.splitlines() if "decode tok/s 100 (" in line)
    assert "; same)" in fine or "; inconclusive)" in fine
    assert "PCIe gen1 x8 (max gen4 x8); clock events hw_thermal_slowdown" in text
    assert "PCIe gen1 x16 (max gen5 x16); clock events gpu_idle; power limit 700 W" in text
    assert "unlike the fleet: clocks held back: hw_thermal_slowdown" in text


def test_fleet_view_gives_no_verdict_from_one_run_per_host(tmp_path: Path) -> None:
    # One run per host (as a median of latest runs used to judge): too few for any interval.
    _fleet(Store(tmp_path / "store"))
    out = _cli(tmp_path, "fleet", "--dir", "store")
    assert out.returncode == 0, out.stderr
    slow = next(line for line in out.stdout.splitlines() if "decode tok/s 60 (" in line)
    assert "1 run here, 3 on other hosts" in slow
    assert "no interval: too few samples" in slow and "WORSE" not in slow
    assert slow.endswith("; inconclusive)")


def test_fleet_view_filters_and_names_what_the_store_has(tmp_path: Path) -> None:
    _fleet(Store(tmp_path / "store"))
    ok = _cli(tmp_path, "fleet", "--dir", "store", "--gpu", H100, "--suite", "s")
    assert ok.returncode == 0 and "3 hosts" in ok.stdout
    out = _cli(tmp_path, "fleet", "--dir", "store", "--gpu", "NVIDIA B200")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no baseline runs of GPU 'NVIDIA B200'" in out.stderr
    assert "it has: nvidia-h100-80gb-hbm3/s" in out.stderr
    empty = _cli(tmp_path, "fleet", "--dir", "nothing-here")
    assert empty.returncode == 2 and "no runs at all" in empty.stderr
    # An empty store says how runs get there, not only "see gpufit baseline list" (also empty).
    assert "--gpufit-baseline=save or compare on each host" in empty.stderr
    assert "see gpufit baseline list" not in empty.stderr


@pytest.mark.parametrize("tolerance", ["15", "", "abc", "١٥%"])
def test_fleet_view_bad_tolerance_is_one_message(tmp_path: Path, tolerance: str) -> None:
    out = _cli(tmp_path, "fleet", "--dir", "store", "--tolerance", tolerance)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--tolerance" in out.stderr


def test_fleet_view_of_hand_edited_host_facts_leaves_the_wrong_ones_out(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _fleet(store)
    path = store.find(_save(store, "node-d", 99.0))
    record = json.loads(path.read_text())
    record["fingerprint"]["host_facts"] = {"power_limit_mw": "lots", "clock_event_reasons": 3}
    record["fingerprint"]["driver_version"] = ["570"]
    path.write_text(json.dumps(record))
    out = _cli(tmp_path, "fleet", "--dir", "store")
    assert out.returncode == 0, out.stderr
    assert "host node-d (run " in out.stdout and "no host facts recorded" in out.stdout


def test_fleet_view_of_a_corrupt_record_names_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    run = _save(store, "node-a", 100.0)
    store.find(run).write_text("{not json")
    out = _cli(tmp_path, "fleet", "--dir", "store")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{run}.json is unreadable or corrupt" in out.stderr


# ---- through pytest ---------------------------------------------------------------------------

SUITE = (
    "suite: s\ntargets:\n"
    "  - {name: t, model: qwen3-0.6b, weights: random, device: cuda, checks: {fits: {}}}\n"
)
FAKE_RUN = """
from pytest_gpufit.suites import checks

def fake(ctx, params):
    ctx.metrics["decode_tok_s"] = {decode}

REAL = checks.RUNNERS["fits"]

def pytest_configure(config):
    checks.RUNNERS["fits"] = fake

def pytest_unconfigure(config):
    checks.RUNNERS["fits"] = REAL
"""


def _host_session(pytester: pytest.Pytester, decode: float, card: str) -> None:
    from fake_probe import nvml_probe

    pytester.makefile(".gpufit.yaml", s=SUITE)
    pytester.makeconftest(nvml_probe(f"[{card}]") + FAKE_RUN.format(decode=decode))


SLOW_CARD = (
    "FakeCard(pcie_gen=(1, 4), pcie_width=(8, 8), clock_events=0x40, power_mw=(400000, 700000))"
)


def test_a_gate_session_on_the_slow_host_fails_and_the_others_pass(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(pytester.path / "store")
    _save(store, "node-a", 100.0)
    _save(store, "node-b", 104.0)
    args = [
        "--gpufit-baseline=compare",
        "--gpufit-baseline-dir=store",
        "--gpufit-on-missing=fail",
        "--gpufit-fleet-tolerance=15%",
    ]
    _host_session(pytester, 60.0, SLOW_CARD)
    slow = pytester.runpytest_subprocess(*args, "--gpufit-host=node-c")
    assert slow.ret == 1
    slow.stdout.fnmatch_lines(
        [
            "*fleet: host node-c is out of line (NVIDIA H100 80GB HBM3, suite s): "
            f"{NODE}: decode tok/s 60 vs fleet median 102 of 2 other hosts (-41.2%, "
            "tolerance 15%); this host: PCIe gen1 x8 (max gen4 x8); clock events "
            "hw_thermal_slowdown; power limit 400 W (default 700 W); driver 550.54.15*"
        ]
    )
    # The same host in line passes; its name may come from the environment (a runner pod).
    _host_session(pytester, 101.0, "FakeCard()")
    ok = pytester.runpytest_subprocess(*args[:-1], "-p", "no:randomly")
    assert ok.ret == 0  # no fleet tolerance: no fleet check
    monkeypatch.setenv("GPUFIT_HOST", "node-d")
    env_host = pytester.runpytest_subprocess(*args)
    assert env_host.ret == 0, env_host.stdout.str()
    hosts = {store.read(i.path)["fingerprint"]["host"] for i in store.runs()}
    assert hosts == {"node-a", "node-b", "node-c", "node-d"} | {hosts_default()}


def hosts_default() -> str:
    from pytest_gpufit.baseline.fingerprint import default_host

    return default_host() or ""


def test_too_few_hosts_fails_the_gate_and_warns_otherwise(pytester: pytest.Pytester) -> None:
    store = Store(pytester.path / "store")
    _save(store, "node-a", 100.0)
    _host_session(pytester, 100.0, "FakeCard()")
    args = ["--gpufit-baseline=compare", "--gpufit-baseline-dir=store", "--gpufit-host=node-z"]
    soft = pytester.runpytest_subprocess(*args, "--gpufit-fleet-tolerance=15%")
    assert soft.ret == 0
    soft.stdout.fnmatch_lines(["*fleet check of host node-z*no verdict, 1 other host*"])
    gate = pytester.runpytest_subprocess(
        *args, "--gpufit-fleet-tolerance=15%", "--gpufit-on-missing=fail"
    )
    assert gate.ret == 1
    gate.stdout.fnmatch_lines(["*fleet check of host node-z*no verdict, 1 other host*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpufit-fleet-tolerance=15"], "--gpufit-fleet-tolerance: expected a percentage*"),
        (["--gpufit-fleet-tolerance="], "--gpufit-fleet-tolerance is set but empty*"),
        (["--gpufit-host=a\nb"], "--gpufit-host: expected a host name*"),
        (
            ["--gpufit-fleet-tolerance=15%", "--gpufit-on-missing=fail"],
            "*fleet_tolerance (from --gpufit-fleet-tolerance)*baseline=off (from default)*"
            "the fleet check would silently not run*",
        ),
    ],
)
def test_bad_fleet_settings_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])
    assert "Traceback" not in result.stderr.str()


def test_fleet_tolerance_from_the_environment_names_its_source(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_x(): pass")
    monkeypatch.setenv("GPUFIT_FLEET_TOLERANCE", "fast")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*GPUFIT_FLEET_TOLERANCE: expected a percentage*'fast'*"])


def test_a_fleet_tolerance_that_can_never_fail_says_so(tmp_path: Path) -> None:
    """decode 102 -> 1 under a 200% fleet tolerance passed in silence: a rate cannot fall by
    more than 100%, so no figure could ever fail; the run now says so."""
    store = Store(tmp_path)
    _save(store, "node-a", 100.0)
    _save(store, "node-b", 104.0)
    (saved,) = _session(store, "node-c", 2.0, strict=True).save(_measured(1.0), accept=False)
    assert "a tolerance of 100% or more can never fail on decode tok/s" in saved.message
    assert "decode tok/s 1 vs fleet median 102" in saved.message
    (saved,) = _session(store, "node-d", 0.5, strict=True).save(_measured(100.0), accept=False)
    assert "can never fail" not in saved.message
