"""SGLang: its knobs, its memory plan (structure from its model_runner; not calibrated: one
held-out row in fixtures/calibration/heldout.tsv), the words of its start-up log and its
``/get_server_info``.

Its log words memory in "GB" that are GiB (its ``get_available_gpu_memory`` divides by
``1 << 30``)::

    Load weight end. type=Qwen3ForCausalLM, dtype=torch.bfloat16, ..., mem usage=7.08 GB.
    KV Cache is allocated. #tokens: 298447, K size: 5.69 GB, V size: 5.69 GB
    max_total_num_tokens=298447, chunked_prefill_size=2048, ..., context_len=40960
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_gpufit.engines import log_words
from pytest_gpufit.engines.log_words import NUMBER, num
from pytest_gpufit.engines.planning import (
    act_bytes,
    custom_allreduce_kind,
    kv_dtype,
    model_len,
    request_bytes,
    served_weights,
)
from pytest_gpufit.engines.protocol import Engine, EngineKnobs, EnginePlan, Knob
from pytest_gpufit.engines.records import EngineAllocation, EngineFacts, LogSetup
from pytest_gpufit.fit.estimate import (
    activation_bytes_per_gpu,
    check_tensor_parallel,
    kv_bytes_per_token_per_gpu,
    runtime_bytes_per_gpu,
    usable_bytes,
)
from pytest_gpufit.fit.spec import ModelSpec
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.units import GIB

MEM_FRACTION_STATIC = 0.88
# Not measured for SGLang: vLLM 0.19's figures stand in (engines/vllm.py).
CHUNKED_PREFILL_SIZE = 8192
CUDA_GRAPH_POOL = int(0.91 * GIB)

KV_CACHE_TYPES: dict[str, str | None] = {
    "auto": None,
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
}

_WEIGHTS = re.compile(r"Load weight end\..*?\bmem usage=" + NUMBER + r"\s*GB")
_KV = re.compile(
    r"KV Cache is allocated\.\s*#tokens:\s*"
    + NUMBER
    + r"(?:,\s*K size:\s*"
    + NUMBER
    + r"\s*GB,\s*V size:\s*"
    + NUMBER
    + r"\s*GB|,\s*KV size:\s*"
    + NUMBER
    + r"\s*GB)?"
)
_TOTAL = re.compile(r"\bmax_total_num_tokens=" + NUMBER)
_DTYPE = re.compile(r"Load weight end\..*?dtype=([\w.]+)")
_KEYS = {
    **log_words.COMMON_KEYS,
    "model_path": "model",
    "tp_size": "tensor_parallel",
    "tp": "tensor_parallel",
    "context_length": "max_model_len",
    "mem_fraction_static": "gpu_memory_utilization",
    "kv_cache_dtype": "kv_cache_dtype",
    "max_running_requests": "max_num_seqs",
}


class Sglang:
    """SGLang (``python -m sglang.launch_server``)."""

    name = "sglang"
    aliases: tuple[str, ...] = ()
    knobs = (
        Knob(
            "gpu_memory_utilization",
            "--mem-fraction-static",
            ("--mem-fraction-static",),
            f"0-1 (default {MEM_FRACTION_STATIC})",
            ("mem_fraction_static",),
        ),
        Knob(
            "max_model_len",
            "--context-length",
            ("--max-model-len",),
            "tokens per request (default: --context, else the model's maximum)",
            ("context_length",),
        ),
        Knob(
            "max_num_seqs",
            "--max-running-requests",
            ("--max-num-seqs",),
            "requests at once (its --max-running-requests)",
            ("max_running_requests",),
        ),
        Knob(
            "max_num_batched_tokens",
            "--chunked-prefill-size",
            ("--max-num-batched-tokens",),
            f"prefill chunk (default {CHUNKED_PREFILL_SIZE})",
            ("chunked_prefill_size",),
        ),
        Knob("kv_cache_dtype", "--kv-cache-dtype", ("--kv-cache-dtype",), "auto, fp8, bf16..."),
        Knob(
            "enforce_eager",
            "--disable-cuda-graph",
            ("--enforce-eager",),
            "no CUDA graphs",
            ("disable_cuda_graph",),
        ),
    )
    kv_cache_types = KV_CACHE_TYPES
    split = "tensor parallel"
    parallelism = {
        "tp": "--tp {n}",
        "pp": "--pp-size {n}",
        "dp": "--dp {n} (or {n} servers behind a router)",
        "ep": "--tp {n} --ep-size {n}",
    }
    split_strategy = "tp"
    log_marks = re.compile(r"sglang|Load weight (?:begin|end)|KV Cache is allocated|ServerArgs\(")
    command_marks = re.compile(r"sglang\.launch_server\s+(.*)$")
    setup_keys = _KEYS
    probes = ("/get_server_info",)
    generic = False
    serves_reads = (
        "engine and version (/get_server_info)",
        "allocation from its log (weights, KV cache GB and tokens)",
    )

    def check_split(self, spec: ModelSpec, gpus: int, where: str = "tensor parallel") -> None:
        check_tensor_parallel(spec, gpus, where)

    def allreduce_kind(self, ranks: int, nvlink: bool, p2p: bool) -> str:
        return custom_allreduce_kind(ranks, nvlink, p2p)

    def plan(
        self, spec: ModelSpec, precision: str, gpu: Gpu, tp: int, knobs: EngineKnobs
    ) -> EnginePlan:
        """Weights and the KV pool share ``mem_fraction_static`` of the card; activations and
        CUDA graphs live in the rest."""
        usable, source = usable_bytes(gpu)
        frac = knobs.gpu_memory_utilization or MEM_FRACTION_STATIC
        budget = int(usable * frac)
        weights = served_weights(spec, precision, tp)
        kv_name, kv_b = kv_dtype(precision, knobs, KV_CACHE_TYPES)
        per_token = kv_bytes_per_token_per_gpu(spec, kv_b, tp)
        context = runtime_bytes_per_gpu(tp)
        available = budget - weights - context
        tokens = max(available, 0) // per_token if per_token else 0
        chunk = knobs.max_num_batched_tokens or CHUNKED_PREFILL_SIZE
        acts = activation_bytes_per_gpu(spec, chunk, 1, act_bytes(precision), tp)
        graphs = 0 if knobs.enforce_eager else CUDA_GRAPH_POOL
        length, reason = model_len(spec, knobs)
        one = request_bytes(spec, per_token, length)
        gb = GIB
        if reason is None and available <= 0:
            reason = (
                f"weights {weights / gb:.2f} GiB and runtime {context / gb:.2f} GiB per GPU "
                f"leave nothing of the {budget / gb:.2f} GiB static pool ({frac:g} x usable) "
                "for the KV cache; raise --mem-fraction-static or add GPUs"
            )
        elif reason is None and acts + graphs > usable - budget:
            reason = (
                f"activations ({acts / gb:.2f} GiB) and CUDA graphs ({graphs / gb:.2f} GiB) do "
                f"not fit in the {(usable - budget) / gb:.2f} GiB outside --mem-fraction-static"
            )
        return EnginePlan(
            name=self.name,
            tensor_parallel=tp,
            usable_bytes_per_gpu=usable,
            budget_bytes_per_gpu=budget,
            weights_bytes_per_gpu=weights,
            kv_bytes_per_token_per_gpu=per_token,
            activation_bytes_per_gpu=acts,
            runtime_bytes_per_gpu=context,
            cuda_graph_bytes_per_gpu=graphs,
            kv_cache_bytes_per_gpu=max(available, 0),
            kv_cache_tokens=int(tokens),
            max_concurrency=round(max(available, 0) / one, 2) if one else 0.0,
            starts=reason is None,
            reason=reason,
            context_bytes_per_gpu=0,
            max_model_len=length,
            kv_cache_dtype=kv_name,
            usable_source=source,
        )

    def log_lines(self, plan: EnginePlan) -> list[str]:
        gib = GIB
        tp = f" (per GPU, TP {plan.tensor_parallel})" if plan.tensor_parallel > 1 else ""
        return [
            f"Load weight end. mem usage={plan.weights_bytes_per_gpu / gib:.2f} GB{tp}",
            f"KV Cache is allocated. #tokens: {plan.kv_cache_tokens}, "
            f"size: {plan.kv_cache_bytes_per_gpu / gib:.2f} GB",
            f"max_total_num_tokens={plan.kv_cache_tokens}, context_len={plan.max_model_len}",
        ]

    def knobs_for(self, context: int | None, batch: int, model_max: int | None) -> dict[str, Any]:
        return {"max_model_len": context}

    # ---- its log ----------------------------------------------------------------------------

    def read_allocation(self, lines: Sequence[str]) -> EngineAllocation:
        weights: list[float] = []
        kv_gib = None
        kv_tokens = device = None
        hits: list[str] = []
        for line in lines:
            hit = False
            if found := _WEIGHTS.search(line):
                weights.append(num(found.group(1)))
                hit = True
            if found := _KV.search(line):
                kv_tokens, device, hit = int(num(found.group(1))), "GPU", True
                if found.group(2):
                    kv_gib = num(found.group(2)) + num(found.group(3))
                elif found.group(4):
                    kv_gib = num(found.group(4))
            elif found := _TOTAL.search(line):
                kv_tokens, device, hit = int(num(found.group(1))), "GPU", True
            if hit:
                hits.append(line.strip())
        return EngineAllocation(
            weights_gib=max(weights) if weights else None,
            kv_cache_gib=round(kv_gib, 4) if kv_gib is not None else None,
            kv_cache_tokens=kv_tokens,
            kv_device=device,
            lines=tuple(hits),
        )

    def read_setup_line(self, line: str, found: dict[str, Any]) -> str | None:
        if "ServerArgs(" in line or "server_args" in line:
            log_words.take(found, log_words.config_pairs(line), _KEYS, overwrite=True)
        if match := _DTYPE.search(line):
            found.setdefault("dtype", match.group(1).removeprefix("torch."))
        return None

    def is_rank_line(self, line: str) -> bool:
        return "Load weight end" in line or "KV Cache is allocated" in line

    def knobs_from_setup(self, setup: LogSetup) -> dict[str, Any]:
        # Its chunk and request limits are not the vLLM knobs the plan reads.
        return {
            "gpu_memory_utilization": setup.gpu_memory_utilization,
            "max_model_len": setup.max_model_len,
            "kv_cache_dtype": setup.kv_cache_dtype,
            "enforce_eager": bool(setup.enforce_eager),
        }

    # ---- its server -------------------------------------------------------------------------

    def identify(self, answers: Mapping[str, Any]) -> EngineFacts | None:
        info = answers.get("/get_server_info")
        if isinstance(info, dict) and info.get("version"):
            return EngineFacts(self.name, str(info["version"]), "/get_server_info")
        return None


ENGINE: Engine = Sglang()
