"""The GPU pairs in the session header and the Markdown summary, and the all-reduce figures
beside the suite results (issue 21, item 5)."""

from __future__ import annotations

import dataclasses

import pytest
from fake_probe import nvml_probe

from pytest_gpufit.hardware.catalog import simulated_gpus, simulated_links
from pytest_gpufit.hardware.records import Gpu, GpuLink, Inventory
from pytest_gpufit.report import (
    allreduce_lines,
    inventory_lines,
    link_text,
    markdown_summary,
    measurement_rows,
    measurement_table,
)

PAIR = tuple(dataclasses.replace(g, simulated=False) for g in simulated_gpus("2*rtx-pro-6000"))


def _inventory(*links: GpuLink, gpus: tuple[Gpu, ...] = PAIR) -> Inventory:
    return Inventory(gpus=gpus, source="fake", links=links)


@pytest.mark.parametrize(
    ("link", "text"),
    [
        (
            GpuLink(0, 1, "single-switch", "ok", "ok", "not-supported", "not-supported"),
            "link GPU0-GPU1: P2P ok; topology: single-switch, through one PCIe switch [PIX]",
        ),
        (
            GpuLink(0, 1, "system", "ok", "ok", "ok", "ok"),
            "link GPU0-GPU1: P2P ok; NVLink, PCIe topology: system",
        ),
        (
            GpuLink(0, 1, "host-bridge", "disabled-by-regkey", "disabled-by-regkey"),
            "link GPU0-GPU1: P2P read/write disabled by a driver registry key; "
            "topology: host-bridge, through a CPU's PCIe host bridge [PHB]",
        ),
        (
            GpuLink(0, 1),
            "link GPU0-GPU1: P2P read status unknown (NVML could not say); P2P write status "
            "unknown (NVML could not say); topology: unknown",
        ),
    ],
)
def test_one_short_line_per_pair_says_p2p_and_topology(link: GpuLink, text: str) -> None:
    assert link_text(link) == text
    assert inventory_lines(_inventory(link))[-1] == text


def test_each_pair_has_its_line_after_the_gpus_and_one_gpu_has_none() -> None:
    three = tuple(dataclasses.replace(g, simulated=False) for g in simulated_gpus("3*rtx-pro-6000"))
    links = (GpuLink(0, 1, "board"), GpuLink(0, 2, "system"), GpuLink(1, 2, "system"))
    lines = inventory_lines(_inventory(*links, gpus=three))
    assert [line.split(":")[0] for line in lines if line.startswith("link ")] == [
        "link GPU0-GPU1",
        "link GPU0-GPU2",
        "link GPU1-GPU2",
    ]
    assert lines.index("link GPU0-GPU1: " + link_text(links[0]).split(": ", 1)[1]) == 3
    assert not any(line.startswith("link ") for line in inventory_lines(_inventory(gpus=PAIR[:1])))


def test_simulated_pairs_say_what_the_catalog_knows() -> None:
    gpus = simulated_gpus("2*rtx-pro-6000")
    inventory = Inventory(gpus=gpus, source="simulated", links=simulated_links(gpus))
    assert inventory_lines(inventory)[-1] == (
        "link GPU0-GPU1: P2P ok; topology: unknown (simulated cards)"
    )


def test_the_markdown_summary_lists_the_pairs() -> None:
    link = GpuLink(0, 1, "system", "chipset-not-supported", "chipset-not-supported")
    text = markdown_summary(_inventory(link), {}, {})
    assert (
        "- link GPU0-GPU1: P2P read/write not supported by the chipset; topology: system, "
        "across CPU sockets [SYS]" in text
    )


MEASURED = {
    "link.yaml::pair::allreduce": {
        "suite": "link",
        "target": "pair",
        "check": "allreduce",
        "dtype": "bf16",
        "device": "cuda:0",
        "backend": "transformers",
        "metrics": {
            "allreduce_busbw_gb_s": 52.4,
            "allreduce_latency_us": 13.5,
            "allreduce_busbw_size_bytes": 2**26,
            "allreduce_latency_size_bytes": 8,
            "allreduce_backend": "nccl",
            "allreduce_ranks": 2,
            "allreduce_dtype": "bf16",
        },
    },
    # A check that failed before it measured (a rank that died) says nothing.
    "link.yaml::dead::allreduce": {
        "suite": "link",
        "target": "dead",
        "check": "allreduce",
        "dtype": "bf16",
        "device": "cuda:0",
        "metrics": {},
    },
}
LINE = (
    "link::pair: all-reduce nccl, 2 ranks, bf16: bus bandwidth 52.4 GB/s at 64 MiB, "
    "latency 13.5 us at 8 B"
)


def test_the_all_reduce_figures_follow_the_results_table() -> None:
    assert allreduce_lines(MEASURED) == [LINE]
    assert measurement_table(MEASURED)[-1] == LINE
    assert f"- {LINE}" in markdown_summary(_inventory(), {}, MEASURED)


def test_the_session_header_shows_the_pairs(pytester: pytest.Pytester) -> None:
    cards = (
        "[FakeCard(), FakeCard(uuid='GPU-2')], "
        "links={(0, 1): LINK_SCENARIOS['across-sockets-p2p-off']}"
    )
    pytester.makeconftest(nvml_probe(cards))
    pytester.makepyfile(
        "from pytest_gpufit import requires_gpu\n\n@requires_gpu()\ndef test_a():\n    pass\n"
    )
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "gpufit: GPU1 *",
            "gpufit: link GPU0-GPU1: P2P read/write not supported by the chipset; topology: "
            "system, across CPU sockets [[]SYS]",
        ]
    )


def test_a_target_of_only_all_reduce_checks_shows_no_model_dtype() -> None:
    # Before: the results table showed the target's default dtype (bf16) for a target with no
    # model, beside an all-reduce that ran in fp32 ("all-reduce gloo, 2 ranks, fp32").
    measured = {
        key: {**row, "metrics": {**row["metrics"], "allreduce_dtype": "fp32"}}
        for key, row in MEASURED.items()
    }
    rows = {row[0]: row for row in measurement_rows(measured)}
    assert rows["link::pair"][1] == "-"
    assert measurement_table(measured)[-1].startswith("link::pair: all-reduce nccl, 2 ranks, fp32")
