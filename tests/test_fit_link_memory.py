"""Memory at tensor parallel >= 2 by the link between the cards (issue 21.1): what vLLM charges
to its budget for all-reduce buffers over NVLink/NVSwitch is not what it charges over PCIe."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pytest_gpufit.cli import main
from pytest_gpufit.engines.knobs import parse_knobs
from pytest_gpufit.engines.planning import Interconnect, interconnect, plan
from pytest_gpufit.engines.protocol import EnginePlan
from pytest_gpufit.engines.vllm import NON_TORCH_PCIE_TPN, NON_TORCH_TP1, NON_TORCH_TPN
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.hardware.catalog import catalog_gpu
from pytest_gpufit.units import GIB


@pytest.mark.parametrize(
    ("card", "kind"),
    [("h100-sxm", "nvlink"), ("a100-80gb", "nvlink"), ("rtx-pro-6000", "pcie"), ("l40s", "pcie")],
)
def test_the_catalog_names_the_link(card: str, kind: str) -> None:
    assert interconnect(catalog_gpu(card)).kind == kind


def test_a_probed_card_has_no_known_link() -> None:
    gpu = dataclasses.replace(catalog_gpu("rtx-pro-6000"), catalog_id=None)
    assert interconnect(gpu) == Interconnect("unknown", None)


def _plan(card: str, tp: int, gpu_id: str | None = "same") -> EnginePlan:
    gpu = catalog_gpu(card)
    if gpu_id is None:
        gpu = dataclasses.replace(gpu, catalog_id=None)
    knobs = parse_knobs("vllm", max_model_len=8192)
    return plan(load_spec("qwen3-32b"), "bf16", gpu, tp, knobs)


def test_pcie_tp2_charges_no_nvlink_buffers() -> None:
    """2 x RTX PRO 6000: 0.25 GiB of non-torch memory per rank (the PCIe row), not the H100
    SXM's 2.07 GiB; the 1.82 GiB per rank go to the KV cache."""
    pcie = _plan("rtx-pro-6000", 2)
    unknown = _plan("rtx-pro-6000", 2, gpu_id=None)
    assert pcie.runtime_bytes_per_gpu == NON_TORCH_PCIE_TPN == int(0.25 * GIB)
    assert unknown.runtime_bytes_per_gpu == NON_TORCH_TPN  # unknown link: the larger figure
    freed = pcie.kv_cache_bytes_per_gpu - unknown.kv_cache_bytes_per_gpu
    assert freed == pytest.approx(NON_TORCH_TPN - NON_TORCH_PCIE_TPN, abs=2**20)
    assert pcie.kv_cache_tokens > unknown.kv_cache_tokens
    assert pcie.interconnect.startswith("pcie")
    assert _plan("h100-sxm", 2).runtime_bytes_per_gpu == NON_TORCH_TPN
    assert _plan("h100-sxm", 2).interconnect == "nvlink"


def test_tp1_has_no_link() -> None:
    one = _plan("rtx-pro-6000", 1)
    assert one.runtime_bytes_per_gpu == NON_TORCH_TP1 and one.interconnect == ""


def test_fit_json_names_the_link(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fit", "qwen3-32b", "--gpu", "2*rtx-pro-6000", "--engine", "vllm", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    engine = data["gpus"][0]["engine"]
    assert engine["interconnect"].startswith("pcie")
    assert engine["runtime_bytes_per_gpu"] == NON_TORCH_PCIE_TPN
