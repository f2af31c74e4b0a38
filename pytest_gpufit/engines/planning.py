"""The engine plan: ``plan(spec, precision, gpu, gpus, knobs)`` for any registered engine, and
the pieces the engines' own plans share (the model length they accept, the KV-cache type, what
one request holds, the weights as a serving engine loads them).

Each engine's plan follows what it allocates, in the order it allocates it; constants set from
measured logs say so in their module, with the rows behind them in docs/fit.md ("Engine
profiles").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.engines.protocol import EngineKnobs, EnginePlan, plain_flag
from pytest_gpufit.engines.registry import engine
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.estimate import (
    KV_DTYPES,
    bytes_per_weight,
    check_precision,
    estimate,
    lacks_kernel,
    role_formats,
    weights_per_gpu,
)
from pytest_gpufit.fit.spec import ModelSpec
from pytest_gpufit.hardware.catalog import catalog
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.units import GIB


def plan(
    spec: ModelSpec, precision: str, gpu: Gpu, tensor_parallel: int, knobs: EngineKnobs
) -> EnginePlan:
    """What ``knobs.engine`` allocates for ``spec`` at ``precision`` on ``tensor_parallel``
    cards like ``gpu``; a bad TP size or precision is a ``GpufitError``."""
    the_engine = engine(knobs.engine)
    precision = check_precision(precision)
    the_engine.check_split(spec, tensor_parallel)
    the_plan = the_engine.plan(spec, precision, gpu, tensor_parallel, knobs)
    fmt = estimate(spec, precision, 1).weight_format
    if the_plan.starts and lacks_kernel(fmt, gpu):
        # The memory would do, the kernels are missing (fp8 on a CC 7.5 T4): no engine runs it.
        the_plan = dataclasses.replace(
            the_plan,
            starts=False,
            reason=f"no {fmt} kernel on CC {gpu.cc_text}, native or weight-only (the fit "
            "table's 'unsupported precision')",
        )
    return dataclasses.replace(the_plan, log=tuple(the_engine.log_lines(the_plan)))


def plan_setups(
    spec: ModelSpec, precision: str, setups: Sequence[Any], knobs: EngineKnobs
) -> list[EnginePlan]:
    """``plan`` for each ``fit.table.Setup`` (``id``, ``gpu``, ``count``); an error names the
    setup as the user wrote it (``--gpu 3*h100-sxm: ...``)."""
    plans = []
    for setup in setups:
        try:
            plans.append(plan(spec, precision, setup.gpu, setup.count, knobs))
        except GpufitError as error:
            raise GpufitError(f"--gpu {setup.id}: {error}") from None
    return plans


def plan_text(setup_id: str, gpu: Gpu, engine_plan: EnginePlan) -> list[str]:
    """The text ``gpufit fit --engine`` prints for one setup: the engine's own log wording."""
    p = engine_plan
    gib = GIB
    head = (
        f"{setup_id}: {p.name}, {engine(p.name).split} {p.tensor_parallel} on {gpu.name}: "
        f"usable {p.usable_bytes_per_gpu / gib:.2f} GiB per GPU ({p.usable_source}), "
        f"budget {p.budget_bytes_per_gpu / gib:.2f} GiB"
    )
    verdict = "starts" if p.starts else "DOES NOT START"
    return [head, *(f"  {line}" for line in p.log_lines()), f"  => {verdict}"]


# ---- what the engines' plans share ------------------------------------------------------------


@dataclass(frozen=True)
class Interconnect:
    """How two cards of a setup talk, as the catalog says: ``nvlink`` (NVLink or NVSwitch),
    ``pcie`` or ``unknown`` (a probed card, or one the catalog has no link for); ``p2p``: the
    stock driver's PCIe peer-to-peer (None where no source says)."""

    kind: str
    p2p: bool | None = None

    @property
    def text(self) -> str:
        """``pcie (P2P on)``, ``nvlink``, ``unknown``.

        >>> Interconnect("pcie", False).text
        'pcie (P2P off)'
        """
        if self.kind != "pcie" or self.p2p is None:
            return self.kind
        return f"pcie (P2P {'on' if self.p2p else 'off'})"


def interconnect(gpu: Gpu) -> Interconnect:
    """The link between two cards like ``gpu`` (catalog ``interconnect`` and ``p2p``).

    >>> from pytest_gpufit.hardware.catalog import catalog_gpu
    >>> interconnect(catalog_gpu("h100-sxm")).kind, interconnect(catalog_gpu("rtx-4090")).kind
    ('nvlink', 'pcie')
    """
    entry = catalog().get(gpu.catalog_id or "", {})
    kind = str(entry.get("interconnect", ""))
    p2p = entry.get("p2p")
    p2p = p2p if isinstance(p2p, bool) else None
    if kind.startswith("nvlink"):
        return Interconnect("nvlink", True)
    if kind.startswith("pcie"):
        return Interconnect("pcie", p2p)
    return Interconnect("unknown", p2p)


def custom_allreduce_kind(ranks: int, nvlink: bool, p2p: bool) -> str:
    """vLLM's custom all-reduce (SGLang carries the same code): over NVLink at any size, over
    PCIe at 2 ranks with P2P only ("Custom allreduce is disabled because it's not supported on
    more than two PCIe-only GPUs", ``custom_all_reduce.py``); otherwise NCCL.

    >>> custom_allreduce_kind(2, False, True), custom_allreduce_kind(4, False, True)
    ('one-shot', 'nccl')
    >>> custom_allreduce_kind(2, False, False), custom_allreduce_kind(8, True, True)
    ('nccl', 'one-shot')
    """
    return "one-shot" if nvlink or (ranks == 2 and p2p) else "nccl"


def knob_flag(engine_name: str, field: str) -> str:
    """How ``engine_name`` spells the knob ``field`` in its messages.

    >>> knob_flag("sglang", "gpu_memory_utilization"), knob_flag("llama.cpp", "enforce_eager")
    ('--mem-fraction-static', '--enforce-eager')
    """
    for knob in engine(engine_name).knobs:
        if knob.field == field:
            return knob.flag
    return plain_flag(field)


def act_bytes(precision: str) -> int:
    """Bytes per activation element: fp32 runs in fp32, everything else in 16 bits."""
    return 4 if precision == "fp32" else 2


def model_len(spec: ModelSpec, knobs: EngineKnobs) -> tuple[int, str | None]:
    """The engine's max_model_len and, when it exceeds the model's maximum, why it refuses."""
    top = spec.max_position_embeddings
    length = knobs.max_model_len or top or 8192
    if top and length > top:
        name = knob_flag(knobs.engine, "max_model_len")
        return length, (
            f"{name} {length:,} exceeds the model's max_position_embeddings {top:,}; "
            "the engine refuses it (the positions were never trained)"
        )
    return length, None


def rope_cache(spec: ModelSpec, act_bytes: int) -> int:
    """vLLM and SGLang precompute cos/sin for every position once: max_position x rotary_dim."""
    return (spec.max_position_embeddings or 0) * spec.rotary_dim * act_bytes


# vLLM's MXFP4 MoE backends and how each pads an expert (Mxfp4MoEMethod.create_weights in
# vllm/model_executor/layers/quantization/mxfp4.py): (intermediate per rank, hidden) rounded up
# to these multiples. Triton on Hopper also swizzles the values (triton_kernels'
# HopperMXValueLayout: the packed dimension to 64, the other to 256); its scales' layout is
# not modelled.
MOE_BACKENDS = {
    "marlin": (128, 256),
    "triton": (64, 1),
    "flashinfer-trtllm": (256, 256),
    "flashinfer-cutlass": (128, 128),
}
DEFAULT_MOE_BACKEND = "marlin"


def _up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def mxfp4_padding(spec: ModelSpec, tp: int, backend: str = DEFAULT_MOE_BACKEND) -> float:
    """The factor by which vLLM's MXFP4 MoE ``backend`` grows the expert weights (1.0 where
    nothing pads): Marlin needs n % 256 and k % 128, so gpt-oss's hidden 2,880 becomes 3,072.

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> round(mxfp4_padding(load_spec("gpt-oss-20b"), 1), 4)
    1.0904
    >>> mxfp4_padding(load_spec("gpt-oss-20b"), 1, "triton")
    1.0
    """
    h, i = spec.hidden_size, spec.expert_intermediate_size
    if not i:
        return 1.0
    i_rank = math.ceil(i / tp)
    inter, hidden = MOE_BACKENDS[backend]
    return (_up(h, hidden) * _up(i_rank, inter)) / (h * i_rank)


def hopper_swizzle_padding(spec: ModelSpec, tp: int) -> float:
    """The Triton backend's value swizzle on Hopper: gate/up (2/3 of an expert) and down
    (1/3) each padded along the packed dimension to 64 bytes and the other to 256.

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> round(hopper_swizzle_padding(load_spec("gpt-oss-20b"), 1), 4)
    1.0601
    """
    h, i = spec.hidden_size, spec.expert_intermediate_size
    if not i:
        return 1.0
    i_rank = _up(math.ceil(i / tp), 64)  # create_weights' own round-up first
    base = math.ceil(i / tp)
    gate_up = _up(h // 2, 64) * _up(2 * i_rank, 256) / ((h // 2) * 2 * base)
    down = _up(i_rank // 2, 64) * _up(h, 256) / ((base / 2) * h)
    return (2 * gate_up + down) / 3


def served_weights(
    spec: ModelSpec, precision: str, tp: int, gpu: Gpu | None = None, backend: str | None = None
) -> int:
    """Weights per rank as vLLM and SGLang load them: the checkpoint's share, the padded MXFP4
    experts (by MoE ``backend``; Marlin unless given), and the rotary cos/sin cache they
    precompute."""
    est = estimate(spec, precision, 1)
    weights = weights_per_gpu(spec, precision, tp, total=est.weights_bytes)
    fmt, _ = role_formats(spec, precision)
    if fmt["experts"] == "mxfp4" and spec.params.experts:
        experts = spec.params.experts * bytes_per_weight("mxfp4") / tp
        backend = backend or DEFAULT_MOE_BACKEND
        hopper = gpu is not None and (gpu.compute_capability or (0, 0))[0] == 9
        factor = (
            hopper_swizzle_padding(spec, tp)
            if backend == "triton" and hopper
            else mxfp4_padding(spec, tp, backend)
        )
        weights += int(experts * (factor - 1))
    weights += rope_cache(spec, 4 if spec.model_type == "gpt_oss" else act_bytes(precision))
    return weights


def kv_dtype(precision: str, knobs: EngineKnobs, names: dict[str, str | None]) -> tuple[str, int]:
    """The KV-cache dtype (a ``KV_DTYPES`` key) and its bytes: the knob through the engine's
    ``names``, else (``auto``) the activation dtype."""
    name = knobs.kv_cache_dtype
    key = None if name is None else names.get(name, name)
    if key not in KV_DTYPES:  # auto: the activation dtype
        key = "fp32" if precision == "fp32" else "fp16" if precision == "fp16" else "bf16"
    return key, KV_DTYPES[key]


def request_bytes(spec: ModelSpec, per_token: int, length: int) -> int:
    """Cache one request of ``length`` tokens needs on a rank: sliding layers keep a window."""
    kv = spec.kv
    layers = kv.full_layers + kv.sliding_layers
    if not layers:
        return 0
    window = min(length, kv.window) if kv.window else length
    return per_token * (kv.full_layers * length + kv.sliding_layers * window) // layers
