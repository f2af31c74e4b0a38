"""The link between GPUs gates tests: ``requires_p2p`` and the YAML ``p2p``/``topology`` keys,
judged by the one ``evaluate`` on probed (fake NVML) and simulated pairs (issue 21, item 5)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from fake_nvml import LINK_SCENARIOS, FakeCard, FakeNvml
from fake_probe import nvml_probe

import pytest_gpufit
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import simulated_gpus, simulated_links
from pytest_gpufit.hardware.nvml import probe_nvml
from pytest_gpufit.hardware.probe import build_inventory
from pytest_gpufit.hardware.records import GpuLink, Inventory
from pytest_gpufit.markers import requirement_from_marker, requirement_from_yaml
from pytest_gpufit.requirements import Requirement, evaluate


def machine(*scenarios: str, cards: int = 2) -> Inventory:
    """A probed machine (fake NVML) whose pairs, in order (0,1), (0,2), (1,2)..., are these."""
    fakes = [FakeCard(uuid=f"GPU-{i}") for i in range(cards)]
    pairs = [(a, b) for a in range(cards) for b in range(a + 1, cards)]
    links = {pair: LINK_SCENARIOS[s] for pair, s in zip(pairs, scenarios, strict=False)}
    return probe_nvml(FakeNvml(fakes, links=links), use_environ=False)  # type: ignore[arg-type]


def p2p(*args: object, **kwargs: object) -> Requirement:
    return requirement_from_marker("requires_p2p", args, kwargs)


# ---- the marker and its YAML keys -----------------------------------------------------------


def test_the_marker_is_exported_and_builds_a_p2p_requirement() -> None:
    assert "requires_p2p" in pytest_gpufit.__all__
    mark = pytest_gpufit.requires_p2p(topology="PIX")  # type: ignore[attr-defined]
    assert mark.mark.name == "requires_p2p"
    assert p2p() == Requirement(count=2, p2p=True)
    assert p2p(4, "host-bridge") == Requirement(count=4, p2p=True, topology="host-bridge")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("p2p", True, Requirement(count=2, p2p=True)),
        ("p2p", 4, Requirement(count=4, p2p=True)),
        ("topology", "single-switch", Requirement(count=2, p2p=True, topology="single-switch")),
        ("topology", "NV12", Requirement(count=2, p2p=True, topology="nvlink")),
        ("topology", "sys", Requirement(count=2, p2p=True, topology="system")),
    ],
)
def test_yaml_keys(key: str, value: object, expected: Requirement) -> None:
    assert requirement_from_yaml(key, value) == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("p2p", False, "requires_p2p count: false asks for nothing; leave the key out"),
        ("p2p", 1, "requires_p2p count: P2P joins 2 to 64 GPUs, got 1"),
        ("p2p", "yes", "requires_p2p count: expected a whole number >= 1, got 'yes'"),
        ("topology", "same-switch", "requires_p2p topology: expected one of nvlink, board, "),
        ("topology", 3, "requires_p2p topology: expected one of"),
    ],
)
def test_bad_yaml_values_name_the_key_and_the_fix(key: str, value: object, message: str) -> None:
    with pytest.raises(GpufitError, match="^" + message.replace("(", r"\(")):
        requirement_from_yaml(key, value)


def test_merge_keeps_p2p_and_the_tighter_bound() -> None:
    gpus4 = requirement_from_marker("requires_gpu", (4,))
    merged = gpus4.merge(p2p(topology="host-bridge")).merge(p2p(topology="single-switch"))
    assert (merged.count, merged.p2p, merged.topology) == (4, True, "single-switch")
    assert Requirement().merge(Requirement()).p2p is False


# ---- evaluate on probed pairs -----------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["nvlink-pair", "pcie-same-switch", "pcie-same-root"])
def test_p2p_met(scenario: str) -> None:
    verdict = evaluate(p2p(), machine(scenario))
    assert verdict.ok and verdict.devices == (0, 1)


def test_the_reason_names_the_pair_the_status_and_the_topology() -> None:
    verdict = evaluate(p2p(), machine("across-sockets-p2p-off"))
    assert not verdict.ok
    assert verdict.reason == (
        "needs P2P between 2 GPUs; GPU0-GPU1 P2P read/write not supported by the chipset "
        "(topology: system, across CPU sockets [SYS])"
    )
    disabled = evaluate(p2p(), machine("p2p-disabled"))
    assert "P2P read/write disabled by a driver registry key" in disabled.reason


def test_a_pair_nvml_says_nothing_about_is_not_met() -> None:
    verdict = evaluate(p2p(), machine("no-support"))
    assert not verdict.ok
    assert "GPU0-GPU1 P2P read status unknown (NVML could not say)" in verdict.reason
    bare = Inventory(gpus=machine("no-support").gpus, source="provider")  # no link records
    assert "no link facts" in evaluate(p2p(), bare).reason


@pytest.mark.parametrize(
    ("scenario", "bound", "ok"),
    [
        ("pcie-same-switch", "single-switch", True),
        ("pcie-same-root", "single-switch", False),
        ("pcie-same-root", "host-bridge", True),
        ("nvlink-pair", "board", True),  # NVLink meets any bound
        ("pcie-same-switch", "nvlink", False),
    ],
)
def test_topology_bound(scenario: str, bound: str, ok: bool) -> None:
    verdict = evaluate(p2p(topology=bound), machine(scenario))
    assert verdict.ok is ok, verdict.reason
    if not ok:
        assert verdict.reason.startswith(f"needs P2P between 2 GPUs, joined {bound} or nearer; ")
        assert f"farther than {bound}" in verdict.reason


def test_the_first_group_that_reaches_each_other_is_chosen() -> None:
    # GPU0 is across the sockets from GPU1 and GPU2; GPU1-GPU2 share a switch.
    inv = machine("across-sockets-p2p-off", "across-sockets-p2p-off", "pcie-same-switch", cards=3)
    verdict = evaluate(p2p(), inv)
    assert verdict.ok and verdict.devices == (1, 2)
    three = evaluate(p2p(3), inv)
    assert not three.ok
    assert three.reason.startswith("needs P2P between 3 GPUs; GPU0-GPU1 P2P read/write not")
    assert "GPU0-GPU2" in three.reason


def test_p2p_among_the_devices_that_meet_the_other_requirements() -> None:
    inv = machine("pcie-same-switch", "pcie-same-switch", "across-sockets-p2p-off", cards=3)
    small = dataclasses.replace(inv.gpus[1], memory_total_bytes=10**9)
    inv = dataclasses.replace(inv, gpus=(inv.gpus[0], small, inv.gpus[2]))
    both = p2p().merge(requirement_from_marker("requires_vram", (40,)))
    verdict = evaluate(both, inv)  # GPU1 is too small; GPU0-GPU2 is a same-switch pair
    assert verdict.ok and verdict.devices == (0, 2)


def test_count_beyond_the_machine_says_so_first() -> None:
    verdict = evaluate(p2p(4), machine("pcie-same-switch"))
    assert verdict.reason.startswith("needs 4 GPUs; found 2")


# ---- simulation ------------------------------------------------------------------------------


def simulated(setup: str) -> Inventory:
    return build_inventory(setup)


def test_simulated_pairs_say_what_the_catalog_knows() -> None:
    (pro,) = simulated("2*rtx-pro-6000").links
    assert pro.simulated and pro.p2p is True and pro.topology is None
    assert pro.p2p_nvlink == "not-supported"
    (sxm,) = simulated("2*h100-sxm").links
    assert sxm.level == "nvlink" and sxm.p2p is True
    (geforce,) = simulated("2*rtx-4090").links
    assert geforce.p2p is False
    (mixed,) = simulated("h100-sxm,rtx-pro-6000").links
    assert mixed.p2p is None and mixed.level is None
    (unknown,) = simulated("2*l40s").links  # the catalog has no p2p entry for the L40S
    assert unknown.p2p is None


@pytest.mark.parametrize(
    ("setup", "req", "reason"),
    [
        ("2*rtx-pro-6000", p2p(), None),
        ("2*h100-sxm", p2p(topology="single-switch"), None),
        (
            "2*rtx-4090",
            p2p(),
            "needs P2P between 2 GPUs; GPU0-GPU1 P2P read/write not supported "
            "(topology: unknown (simulated cards))",
        ),
        (
            "2*rtx-pro-6000",
            p2p(topology="single-switch"),
            "needs P2P between 2 GPUs, joined single-switch or nearer; GPU0-GPU1 topology: "
            "unknown (simulated cards), so the bound single-switch cannot be judged",
        ),
        (
            "h100-sxm,rtx-pro-6000",
            p2p(),
            "needs P2P between 2 GPUs; GPU0-GPU1 P2P read status unknown (the catalog does not "
            "say) (topology: unknown (simulated cards)), P2P write status unknown (the catalog "
            "does not say) (topology: unknown (simulated cards))",
        ),
    ],
)
def test_simulated_verdicts(setup: str, req: Requirement, reason: str | None) -> None:
    verdict = evaluate(req, simulated(setup))
    assert verdict.simulated
    if reason is None:
        assert verdict.ok, verdict.reason
    else:
        assert not verdict.ok and verdict.reason == reason


def test_a_huge_simulated_setup_carries_no_pairs_and_says_so() -> None:
    inv = simulated("100*h100-sxm")
    assert inv.links == ()
    assert "no link facts" in evaluate(p2p(), inv).reason


def test_xdist_pinning_renumbers_simulated_links() -> None:
    from types import SimpleNamespace

    from pytest_gpufit.xdist_pinning import pinned_to

    inv = simulated("rtx-4090,2*rtx-pro-6000")
    plan = SimpleNamespace(group=(1, 2), worker="gw1", visible="1,2")
    worker = pinned_to(inv, plan)
    assert [g.catalog_id for g in worker.gpus] == ["rtx-pro-6000-blackwell"] * 2
    (link,) = worker.links
    assert (link.a, link.b, link.p2p) == (0, 1, True)  # the old GPU1-GPU2 pair
    assert evaluate(p2p(), worker).ok


def test_simulated_links_of_a_setup_are_one_per_pair() -> None:
    gpus = simulated_gpus("4*rtx-pro-6000")
    assert len(simulated_links(gpus)) == 6


# ---- pytest sessions: markers and YAML, skip and fail -----------------------------------------


def _gated(pytester: pytest.Pytester, marker: str = "requires_p2p()") -> None:
    pytester.makepyfile(f"""
        from pytest_gpufit import requires_p2p

        @{marker}
        def test_pair():
            pass
    """)


def test_marker_skips_then_fails_on_a_machine_without_p2p(pytester: pytest.Pytester) -> None:
    cards = "[FakeCard(), FakeCard(uuid='GPU-2')], links={(0, 1): LINK_SCENARIOS[%r]}"
    pytester.makeconftest(nvml_probe(cards % "across-sockets-p2p-off"))
    _gated(pytester)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*needs P2P between 2 GPUs; GPU0-GPU1 P2P read/write not supported by the chipset*"]
    )
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(failed=1)
    result.stdout.no_fnmatch_line("*Traceback*")
    pytester.makeconftest(nvml_probe(cards % "pcie-same-switch"))
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1)


def test_marker_under_simulation(pytester: pytest.Pytester) -> None:
    _gated(pytester, "requires_p2p(topology='single-switch')")
    result = pytester.runpytest("-rs", "--gpufit-simulate=2*h100-sxm")
    result.stdout.fnmatch_lines(["*simulated: would run on GPU0*GPU1*"])
    result = pytester.runpytest("-rs", "--gpufit-simulate=2*rtx-pro-6000")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*so the bound single-switch cannot be judged*"])


def test_suite_requires_p2p_and_topology(pytester: pytest.Pytester) -> None:
    suite = """
suite: pair
requires: {p2p: true, topology: PIX}
targets:
  - name: m
    model: qwen3-0.6b
    weights: random
    checks: {fits: {}}
"""
    pytester.makefile(".gpufit.yaml", pair=suite)
    cards = "[FakeCard(), FakeCard(uuid='GPU-2')], links={(0, 1): LINK_SCENARIOS[%r]}"
    pytester.makeconftest(nvml_probe(cards % "pcie-same-root"))
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*joined single-switch or nearer; GPU0-GPU1 joined through*"])
    pytester.makeconftest(nvml_probe(cards % "pcie-same-switch"))
    result = pytester.runpytest("-rs", "--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1)


def test_a_bad_suite_value_is_a_collection_error_naming_the_place(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(
        ".gpufit.yaml",
        bad="suite: b\nrequires: {p2p: false}\ntargets:\n  - name: m\n    model: qwen3-0.6b\n"
        "    weights: random\n    checks: {fits: {}}\n",
    )
    result = pytester.runpytest("--gpufit-simulate=2*h100-sxm")
    result.stdout.fnmatch_lines(["*bad.gpufit.yaml:2*p2p*false asks for nothing*"])
    result.stdout.no_fnmatch_line("*Traceback*")


# ---- the fingerprint ------------------------------------------------------------------------


def test_the_links_of_a_card_enter_its_fingerprint_and_changes_are_named() -> None:
    from pytest_gpufit.baseline import environment_changes, fingerprint

    before = machine("pcie-same-switch", "pcie-same-root", "pcie-same-root", cards=3)
    after = machine("across-sockets-p2p-off", "pcie-same-root", "pcie-same-root", cards=3)
    old = fingerprint(before.gpus[0], before.environment, links=before.links)
    assert old.links is not None and [(x["a"], x["b"]) for x in old.links] == [(0, 1), (0, 2)]
    new = fingerprint(after.gpus[0], after.environment, links=after.links)
    changes = environment_changes(old.to_dict(), new.to_dict())
    assert "GPU0-GPU1 topology single-switch -> system" in changes
    assert "GPU0-GPU1 P2P read ok -> chipset-not-supported" in changes
    assert not any("GPU0-GPU2" in c for c in changes)
    json.dumps(new.to_dict())  # stored as JSON
    # One GPU, a simulated card, and a record from before links: nothing to say.
    lone = machine(cards=1)
    assert fingerprint(lone.gpus[0], lone.environment, links=lone.links).links is None
    sim = simulated("2*h100-sxm")
    assert fingerprint(sim.gpus[0], sim.environment, links=sim.links).links is None
    legacy = {k: v for k, v in old.to_dict().items() if k != "links"}
    assert environment_changes(legacy, new.to_dict()) == []
    assert environment_changes({"links": "junk"}, {"links": [1, {"a": 0}]}) == []


def test_the_baseline_session_stores_the_links(tmp_path: Path) -> None:
    from pytest_gpufit.baseline import BaselineSession, Store

    inv = machine("pcie-same-switch")
    session = BaselineSession(
        Store(tmp_path / "b"), inv.environment, inv.gpus, tmp_path, links=inv.links
    )
    (saved,) = session.save({"s.yaml::m::fits": {"gpu": inv.gpus[0].name, "suite": "s"}}, False)
    record = session.store.read(next(iter(session.store.runs())).path)
    assert record["fingerprint"]["links"][0]["topology"] == "single-switch"
    assert saved.checks == 1


def test_gpu_link_round_trips_through_to_dict() -> None:
    link = GpuLink(0, 1, "numa-node", "ok", "ok", "not-supported", "not-supported")
    assert GpuLink(**link.to_dict()) == link
