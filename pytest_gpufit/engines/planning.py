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


def mxfp4_padding(spec: ModelSpec, tp: int) -> float:
    """vLLM's Marlin MXFP4 MoE kernel pads each expert: n % 256 and k % 128 (its
    ``Mxfp4MoEMethod.create_weights``: intermediate per rank to 128, hidden to 256); the
    factor by which the expert weights grow. 1.0 where nothing pads."""
    h, i = spec.hidden_size, spec.expert_intermediate_size
    if not i:
        return 1.0
    i_rank = math.ceil(i / tp)
    padded_i = -(-i_rank // 128) * 128
    padded_h = -(-h // 256) * 256
    return (padded_h * padded_i) / (h * i_rank)


def served_weights(spec: ModelSpec, precision: str, tp: int) -> int:
    """Weights per rank as vLLM and SGLang load them: the checkpoint's share, the padded MXFP4
    experts, and the rotary cos/sin cache they precompute."""
    est = estimate(spec, precision, 1)
    weights = weights_per_gpu(spec, precision, tp, total=est.weights_bytes)
    fmt, _ = role_formats(spec, precision)
    if fmt["experts"] == "mxfp4" and spec.params.experts:
        experts = spec.params.experts * bytes_per_weight("mxfp4") / tp
        weights += int(experts * (mxfp4_padding(spec, tp) - 1))
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
