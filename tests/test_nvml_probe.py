"""The NVML probe against a fake library: normal, missing, unloaded, unsupported, lost."""

from __future__ import annotations

import pytest
from fake_nvml import (
    RTX_4090,
    FakeCard,
    FakeNvml,
    NVMLError_DriverNotLoaded,
    NVMLError_LibraryNotFound,
    OldFakeNvml,
)

from pytest_gpufit.hardware.nvml import probe_nvml


def probe(nvml: FakeNvml, visible: str | None = None):
    return probe_nvml(nvml, visible=visible, use_environ=False)  # type: ignore[arg-type]


def test_two_gpus_all_fields() -> None:
    nvml = FakeNvml([FakeCard(), FakeCard(**RTX_4090)])
    inv = probe(nvml)
    assert inv.reason is None and len(inv.gpus) == 2
    h100, rtx = inv.gpus
    assert h100.name == "NVIDIA H100 80GB HBM3" and h100.index == 0
    assert h100.memory_total_bytes == 81559 * 2**20
    assert h100.memory_free_bytes == (81559 - 512) * 2**20
    assert h100.compute_capability == (9, 0) and h100.architecture == "hopper"
    assert h100.memory_bandwidth_bytes_s == pytest.approx(3.352e12, rel=1e-3)
    assert rtx.memory_bandwidth_bytes_s == pytest.approx(1.008e12, rel=1e-3)
    assert h100.sm_count == 132 and h100.ecc_enabled is True and h100.mig_enabled is False
    assert h100.pci_bus_id == "00000000:01:00.0"
    assert "fp8" in h100.native_dtypes and "fp4" not in h100.native_dtypes
    assert inv.environment.driver_version == "550.54.15"
    assert inv.environment.cuda_driver_version == "12.4"
    assert nvml.initialised == 0, "NVML must be shut down after probing"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (NVMLError_LibraryNotFound, "NVML shared library not found"),
        (NVMLError_DriverNotLoaded, "NVIDIA driver not loaded"),
    ],
)
def test_library_failures_give_an_empty_inventory_with_reason(error: type, reason: str) -> None:
    inv = probe(FakeNvml([FakeCard()], init_error=error))
    assert inv.gpus == () and reason in (inv.reason or "")


# Each NVML query and the record fields it feeds: refused by the driver, exactly those fields
# become None (a derived one too: bandwidth needs the bus width and the clock); the rest of the
# record is what the full probe gives.
UNSUPPORTED = {
    "nvmlDeviceGetCudaComputeCapability": {"compute_capability"},
    "nvmlDeviceGetArchitecture": {"architecture"},
    "nvmlDeviceGetMemoryBusWidth": {"memory_bus_width_bits", "memory_bandwidth_bytes_s"},
    "nvmlDeviceGetAttributes": {"sm_count"},
    "nvmlDeviceGetMigMode": {"mig_enabled"},
    "nvmlDeviceGetEccMode": {"ecc_enabled"},
    "nvmlDeviceGetPciInfo": {"pci_bus_id"},
    "nvmlDeviceGetMaxClockInfo": {"max_memory_clock_mhz", "memory_bandwidth_bytes_s"},
    "nvmlDeviceGetCurrPcieLinkGeneration": {"pcie_link_gen_current"},
    "nvmlDeviceGetMaxPcieLinkGeneration": {"pcie_link_gen_max"},
    "nvmlDeviceGetCurrPcieLinkWidth": {"pcie_link_width_current"},
    "nvmlDeviceGetMaxPcieLinkWidth": {"pcie_link_width_max"},
    "nvmlDeviceGetEnforcedPowerLimit": {"power_limit_mw"},
    "nvmlDeviceGetPowerManagementDefaultLimit": {"power_limit_default_mw"},
}


@pytest.mark.parametrize(("fn", "fields"), sorted(UNSUPPORTED.items()))
def test_a_field_that_is_not_supported_becomes_none(fn: str, fields: set[str]) -> None:
    (full,) = probe(FakeNvml([FakeCard()])).gpus
    (gpu,) = probe(FakeNvml([FakeCard(not_supported={fn})])).gpus
    expected = full.to_dict()
    assert all(expected[f] is not None for f in fields), "the full probe reports them"
    expected.update(dict.fromkeys(fields))
    if fn == "nvmlDeviceGetCudaComputeCapability":
        expected["native_dtypes"] = []  # not guessed: the next test
    assert gpu.to_dict() == expected


def test_cc_not_supported_leaves_no_native_dtypes_rather_than_guessing() -> None:
    (gpu,) = probe(FakeNvml([FakeCard(not_supported={"nvmlDeviceGetCudaComputeCapability"})])).gpus
    assert gpu.compute_capability is None and gpu.native_dtypes == ()


def test_a_lost_gpu_is_dropped_with_a_warning_and_the_rest_renumbered() -> None:
    inv = probe(FakeNvml([FakeCard(lost=True), FakeCard(**RTX_4090)]))
    assert [g.name for g in inv.gpus] == ["NVIDIA GeForce RTX 4090"]
    assert inv.gpus[0].index == 0
    assert any("lost" in w for w in inv.warnings)


def test_the_only_gpu_lost_gives_the_reason() -> None:
    inv = probe(FakeNvml([FakeCard(lost=True)]))
    assert inv.gpus == () and "lost" in (inv.reason or "")


def test_driver_with_no_gpu() -> None:
    inv = probe(FakeNvml([]))
    assert inv.gpus == () and "no GPU" in (inv.reason or "")


@pytest.mark.parametrize(
    ("visible", "names"),
    [
        (None, ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"]),
        ("1", ["NVIDIA GeForce RTX 4090"]),
        ("1,0", ["NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"]),
        ("GPU-2222", ["NVIDIA GeForce RTX 4090"]),
        ("0,7,1", ["NVIDIA H100 80GB HBM3"]),  # CUDA stops at the first invalid entry
    ],
)
def test_cuda_visible_devices_by_index_and_uuid(visible: str | None, names: list[str]) -> None:
    inv = probe(FakeNvml([FakeCard(), FakeCard(**RTX_4090)]), visible=visible)
    assert [g.name for g in inv.gpus] == names
    assert [g.index for g in inv.gpus] == list(range(len(names)))


@pytest.mark.parametrize("visible", ["", "-1", "GPU-nope"])
def test_cuda_visible_devices_hiding_everything(visible: str) -> None:
    inv = probe(FakeNvml([FakeCard()]), visible=visible)
    assert inv.gpus == () and "CUDA_VISIBLE_DEVICES" in (inv.reason or "")


def test_no_gpu_on_this_machine_is_a_reason_not_an_exception() -> None:
    inv = probe_nvml()  # the real library: this CI machine has no NVIDIA driver
    if inv.gpus:
        pytest.skip("this machine has a GPU")
    assert inv.reason


def test_host_facts_pcie_link_clock_events_and_power_limit() -> None:
    card = FakeCard(
        pcie_gen=(1, 5), pcie_width=(8, 16), clock_events=0x1 | 0x40, power_mw=(300000, 350000)
    )
    (gpu,) = probe(FakeNvml([card])).gpus
    assert (gpu.pcie_link_gen_current, gpu.pcie_link_gen_max) == (1, 5)
    assert (gpu.pcie_link_width_current, gpu.pcie_link_width_max) == (8, 16)
    assert gpu.clock_event_reasons == ("gpu_idle", "hw_thermal_slowdown")
    assert (gpu.power_limit_mw, gpu.power_limit_default_mw) == (300000, 350000)
    facts = gpu.host_facts()
    assert facts["clock_event_reasons"] == ["gpu_idle", "hw_thermal_slowdown"]
    assert gpu.to_dict()["pcie_link_width_max"] == 16  # in gpufit probe --json


def test_no_clock_event_reason_is_an_empty_tuple_not_none() -> None:
    (gpu,) = probe(FakeNvml([FakeCard(clock_events=0)])).gpus
    assert gpu.clock_event_reasons == ()


def test_clock_event_reasons_fall_back_to_the_throttle_reasons_of_old_bindings() -> None:
    (gpu,) = probe(OldFakeNvml([FakeCard(clock_events=0x4)])).gpus
    assert gpu.clock_event_reasons == ("sw_power_cap",)


def test_clock_event_reasons_fall_back_when_the_new_call_is_not_supported() -> None:
    card = FakeCard(clock_events=0x8, not_supported={"nvmlDeviceGetCurrentClocksEventReasons"})
    (gpu,) = probe(FakeNvml([card])).gpus
    assert gpu.clock_event_reasons == ("hw_slowdown",)


def test_clock_event_reasons_none_when_the_driver_cannot_say() -> None:
    card = FakeCard(
        not_supported={
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        }
    )
    (gpu,) = probe(FakeNvml([card])).gpus
    assert gpu.clock_event_reasons is None and gpu.to_dict()["clock_event_reasons"] is None


def test_simulated_cards_have_no_host_facts() -> None:
    from pytest_gpufit.hardware.catalog import simulated_gpus

    (gpu,) = simulated_gpus("h100-sxm")
    assert set(gpu.host_facts().values()) == {None}


def test_host_facts_in_the_report_header_and_the_markdown_summary() -> None:
    from pytest_gpufit.report import inventory_lines, markdown_summary

    card = FakeCard(pcie_gen=(1, 5), pcie_width=(16, 16), power_mw=(600000, 700000))
    inv = probe(FakeNvml([card]))
    expected = (
        "PCIe gen1 x16 (max gen5 x16), clock events gpu_idle, power limit 600 W (default 700 W)"
    )
    assert inventory_lines(inv)[1] == "  " + expected
    assert f"  - {expected}" in markdown_summary(inv, {}, {})
    none = probe(
        FakeNvml(
            [
                FakeCard(
                    not_supported={
                        "nvmlDeviceGetCurrPcieLinkGeneration",
                        "nvmlDeviceGetMaxPcieLinkGeneration",
                        "nvmlDeviceGetCurrPcieLinkWidth",
                        "nvmlDeviceGetMaxPcieLinkWidth",
                        "nvmlDeviceGetCurrentClocksEventReasons",
                        "nvmlDeviceGetCurrentClocksThrottleReasons",
                        "nvmlDeviceGetEnforcedPowerLimit",
                        "nvmlDeviceGetPowerManagementDefaultLimit",
                    }
                )
            ]
        )
    )
    assert len(inventory_lines(none)) == 1, "nothing said: no host facts line"


# ---- links between GPUs: topology and P2P (issue 21, item 5) -------------------------------

LINK_EXPECTED = {
    # scenario -> (topology, read, write, atomics, nvlink, p2p, level)
    "nvlink-pair": ("system", "ok", "ok", "ok", "ok", True, "nvlink"),
    "pcie-same-switch": (
        "single-switch",
        "ok",
        "ok",
        "not-supported",
        "not-supported",
        True,
        "single-switch",
    ),
    "pcie-same-root": (
        "host-bridge",
        "ok",
        "ok",
        "not-supported",
        "not-supported",
        True,
        "host-bridge",
    ),
    "across-sockets-p2p-off": (
        "system",
        "chipset-not-supported",
        "chipset-not-supported",
        "chipset-not-supported",
        "not-supported",
        False,
        "system",
    ),
    "p2p-disabled": (
        "single-switch",
        "disabled-by-regkey",
        "disabled-by-regkey",
        "disabled-by-regkey",
        "not-supported",
        False,
        "single-switch",
    ),
    "no-support": (None, None, None, None, None, None, None),
}


@pytest.mark.parametrize("scenario", sorted(LINK_EXPECTED))
def test_each_pair_gets_its_topology_and_p2p_status(scenario: str) -> None:
    from fake_nvml import LINK_SCENARIOS

    nvml = FakeNvml([FakeCard(), FakeCard(uuid="GPU-2")], links={(0, 1): LINK_SCENARIOS[scenario]})
    inv = probe(nvml)
    (link,) = inv.links
    topology, read, write, atomics, nvlink, p2p, level = LINK_EXPECTED[scenario]
    assert (link.a, link.b) == (0, 1) and link.simulated is False
    assert link.topology == topology
    assert (link.p2p_read, link.p2p_write, link.p2p_atomics) == (read, write, atomics)
    assert link.p2p_nvlink == nvlink
    assert link.p2p is p2p and link.level == level
    assert inv.link(1, 0) is link
    assert inv.to_dict()["links"] == [link.to_dict()]
    assert nvml.initialised == 0


def test_one_gpu_has_no_links_and_three_have_three() -> None:
    assert probe(FakeNvml([FakeCard()])).links == ()
    cards = [FakeCard(uuid=f"GPU-{i}") for i in range(3)]
    inv = probe(FakeNvml(cards))
    assert [(x.a, x.b) for x in inv.links] == [(0, 1), (0, 2), (1, 2)]
    # A pair the library answers nothing about is all None, not an exception.
    assert all(x.topology is None and x.p2p is None for x in inv.links)


def test_a_query_the_driver_refuses_leaves_that_field_none() -> None:
    from fake_nvml import FakeLink

    link = FakeLink(10, {"read": 0, "write": 0})  # atomics and NVLink refused
    (probed,) = probe(FakeNvml([FakeCard(), FakeCard(uuid="GPU-2")], links={(0, 1): link})).links
    assert probed.topology == "single-switch" and probed.p2p is True
    assert probed.p2p_atomics is None and probed.p2p_nvlink is None


def test_bindings_without_the_link_calls_give_none_fields() -> None:
    class Old(FakeNvml):
        def __getattribute__(self, name: str) -> object:
            if name in ("nvmlDeviceGetTopologyCommonAncestor", "nvmlDeviceGetP2PStatus"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    (link,) = probe(Old([FakeCard(), FakeCard(uuid="GPU-2")])).links
    assert link.topology is None and link.p2p is None


def test_links_follow_cuda_visible_devices_and_lost_cards() -> None:
    from fake_nvml import LINK_SCENARIOS

    cards = [FakeCard(uuid=f"GPU-{i}") for i in range(3)]
    links = {
        (0, 1): LINK_SCENARIOS["pcie-same-switch"],
        (0, 2): LINK_SCENARIOS["across-sockets-p2p-off"],
        (1, 2): LINK_SCENARIOS["pcie-same-root"],
    }
    # CUDA numbers the visible cards 0, 1 in CUDA_VISIBLE_DEVICES order: NVML 2 and 0.
    (link,) = probe(FakeNvml(cards, links=links), visible="2,0").links
    assert (link.a, link.b, link.topology, link.p2p) == (0, 1, "system", False)
    # NVML 0 is lost: NVML 1 and 2 become GPU0 and GPU1, and their link is theirs.
    cards[0].lost = True
    inv = probe(FakeNvml(cards, links=links))
    assert [g.uuid for g in inv.gpus] == ["GPU-1", "GPU-2"]
    (link,) = inv.links
    assert (link.a, link.b, link.topology) == (0, 1, "host-bridge")


def test_devices_option_keeps_the_links_among_the_kept_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fake_nvml import LINK_SCENARIOS

    from pytest_gpufit.hardware import probe as probe_module

    cards = [FakeCard(uuid=f"GPU-{i}") for i in range(3)]
    links = {(0, 2): LINK_SCENARIOS["nvlink-pair"], (0, 1): LINK_SCENARIOS["pcie-same-root"]}
    monkeypatch.setattr(probe_module, "_nvml", lambda: probe(FakeNvml(cards, links=links)))
    inv = probe_module.build_inventory(devices=(0, 2))
    assert [(x.a, x.b, x.level) for x in inv.links] == [(0, 2, "nvlink")]
