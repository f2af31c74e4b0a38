"""transformers (``generate`` in a process, or ``transformers serve``): its knobs and its memory
plan (no budget: everything must fit the usable memory). Its server has no version endpoint
and writes no allocation lines; a launched ``transformers serve`` is known by its command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_gpufit.engines import log_words
from pytest_gpufit.engines.planning import act_bytes, kv_dtype, model_len, request_bytes
from pytest_gpufit.engines.protocol import Engine, EngineKnobs, EnginePlan, Knob
from pytest_gpufit.engines.records import EngineAllocation, EngineFacts, LogSetup
from pytest_gpufit.fit.estimate import (
    KV_DTYPES,
    activation_bytes_per_gpu,
    check_tensor_parallel,
    estimate,
    kv_bytes_per_token_per_gpu,
    runtime_bytes_per_gpu,
    usable_bytes,
    weights_per_gpu,
)
from pytest_gpufit.fit.spec import ModelSpec
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.units import GIB

KV_CACHE_TYPES: dict[str, str | None] = {"auto": None, **{name: name for name in KV_DTYPES}}


class Transformers:
    """Hugging Face transformers."""

    name = "transformers"
    aliases: tuple[str, ...] = ()
    knobs = (
        Knob(
            "max_model_len",
            "--max-model-len (tokens per sequence)",
            ("--max-model-len",),
            "tokens per request (default: --context, else the model's maximum)",
        ),
        Knob("max_num_seqs", "--max-num-seqs (batch)", ("--max-num-seqs",), "batch (default 1)"),
        Knob("kv_cache_dtype", "--kv-cache-dtype", ("--kv-cache-dtype",), "auto, fp8, bf16..."),
    )
    kv_cache_types = KV_CACHE_TYPES
    split = "tensor parallel"
    parallelism = {
        "tp": 'tp_plan="auto" under torchrun --nproc-per-node {n}',
        "dp": "{n} processes, one per GPU (CUDA_VISIBLE_DEVICES), behind a router",
    }
    split_strategy = "tp"
    log_marks = re.compile(r"(?!)")  # its log has no allocation lines to tell it by
    # `transformers serve`, or the module form `python -m transformers.cli.transformers serve`
    command_marks = re.compile(r"\btransformers(?:\.cli\.transformers)?\s+serve\b\s*(.*)$")
    setup_keys = log_words.COMMON_KEYS
    probes: tuple[str, ...] = ()
    generic = False
    serves_reads = ("engine from its launch command (it has no version endpoint)",)

    def check_split(self, spec: ModelSpec, gpus: int, where: str = "tensor parallel") -> None:
        check_tensor_parallel(spec, gpus, where)

    def allreduce_kind(self, ranks: int, nvlink: bool, p2p: bool) -> str:
        return "nccl"  # torch.distributed's all-reduce

    def plan(
        self, spec: ModelSpec, precision: str, gpu: Gpu, tp: int, knobs: EngineKnobs
    ) -> EnginePlan:
        """Weights, the cache of ``max_num_seqs`` sequences of ``max_model_len`` and a prefill
        over them must fit the usable memory."""
        usable, source = usable_bytes(gpu)
        length, reason = model_len(spec, knobs)
        batch = knobs.max_num_seqs or 1
        total = estimate(spec, precision, 1).weights_bytes
        weights = weights_per_gpu(spec, precision, tp, total=total)
        kv_key, kv_b = kv_dtype(precision, knobs, KV_CACHE_TYPES)
        per_token = kv_bytes_per_token_per_gpu(spec, kv_b, tp)
        acts = activation_bytes_per_gpu(spec, length, batch, act_bytes(precision), tp)
        runtime = runtime_bytes_per_gpu(tp)
        one = request_bytes(spec, per_token, length)
        left = usable - weights - acts - runtime
        gb = GIB
        if reason is None and left < one * batch:
            reason = (
                f"weights {weights / gb:.2f} + activations {acts / gb:.2f} + runtime "
                f"{runtime / gb:.2f} + KV cache {one * batch / gb:.2f} GiB per GPU exceed the "
                f"{usable / gb:.2f} GiB usable"
            )
        return EnginePlan(
            name=self.name,
            tensor_parallel=tp,
            usable_bytes_per_gpu=usable,
            budget_bytes_per_gpu=usable,
            weights_bytes_per_gpu=weights,
            kv_bytes_per_token_per_gpu=per_token,
            activation_bytes_per_gpu=acts,
            runtime_bytes_per_gpu=runtime,
            cuda_graph_bytes_per_gpu=0,
            kv_cache_bytes_per_gpu=max(left, 0),
            kv_cache_tokens=max(left, 0) // per_token if per_token else 0,
            max_concurrency=round(max(left, 0) / one, 2) if one else 0.0,
            starts=reason is None,
            reason=reason,
            max_model_len=length,
            kv_cache_dtype=kv_key,
            usable_source=source,
        )

    def log_lines(self, plan: EnginePlan) -> list[str]:
        gib = GIB
        tp = f" (per GPU, TP {plan.tensor_parallel})" if plan.tensor_parallel > 1 else ""
        return [
            f"weights {plan.weights_bytes_per_gpu / gib:.2f} GiB per GPU{tp}, "
            f"KV cache {plan.kv_cache_bytes_per_gpu / gib:.2f} GiB "
            f"({plan.kv_cache_tokens:,} tokens), activations "
            f"{plan.activation_bytes_per_gpu / gib:.2f} GiB",
        ]

    def knobs_for(self, context: int | None, batch: int, model_max: int | None) -> dict[str, Any]:
        return {"max_model_len": context, "max_num_seqs": batch}

    # ---- its log: nothing to read -----------------------------------------------------------

    def read_allocation(self, lines: Sequence[str]) -> EngineAllocation:
        return EngineAllocation()

    def read_setup_line(self, line: str, found: dict[str, Any]) -> str | None:
        return None

    def is_rank_line(self, line: str) -> bool:
        return False

    def knobs_from_setup(self, setup: LogSetup) -> dict[str, Any]:
        return {}

    # ---- its server -------------------------------------------------------------------------

    def identify(self, answers: Mapping[str, Any]) -> EngineFacts | None:
        return None


ENGINE: Engine = Transformers()
