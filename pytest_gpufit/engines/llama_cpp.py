"""llama.cpp (``llama-server``): its knobs, its memory plan (layers split over the GPUs; not
calibrated), the words of its start-up log and its ``/props``.

Its log names the function before each figure (``llama_kv_cache_init``, ``llama_kv_cache``,
``load_tensors``) and counts memory in MiB::

    load_tensors:        CUDA0 model buffer size = 25338.47 MiB
    llama_kv_cache_init:      CUDA0 KV buffer size =   144.00 MiB
    llama_kv_cache: size = 5824.00 MiB ( 16384 cells, ...)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_gpufit.engines import log_words
from pytest_gpufit.engines.log_words import NUMBER, WHOLE, num
from pytest_gpufit.engines.planning import model_len
from pytest_gpufit.engines.protocol import Engine, EngineKnobs, EnginePlan, Knob
from pytest_gpufit.engines.records import EngineAllocation, EngineFacts, LogSetup
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.estimate import RUNTIME_OVERHEAD_BYTES, estimate, usable_bytes
from pytest_gpufit.fit.spec import ModelSpec
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.units import GIB

UBATCH = 512
PARALLEL = 1
# ggml block formats: bytes per element including the block scale.
KV_TYPES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}

_MODEL_BUF = re.compile(
    r"\b(CUDA\d+|ROCm\d+|Metal|Vulkan\d+)(?: model)? buffer size\s*=\s*" + NUMBER + r"\s*MiB"
)
_KV_BUF = re.compile(
    r"\b(CUDA\d+|ROCm\d+|Metal|Vulkan\d+) KV buffer size\s*=\s*" + NUMBER + r"\s*MiB"
)
_KV_SIZE = re.compile(
    r"llama_kv_cache(?:_unified)?:\s*size\s*=\s*"
    + NUMBER
    + r"\s*MiB\s*\(\s*"
    + NUMBER
    + r"\s*cells"
)
_KV_CELLS = re.compile(r"llama_kv_cache_init:\s*kv_size\s*=\s*" + NUMBER)
_VERSION = re.compile(r"\bbuild:?\s*=?\s*([0-9]+)\s*\(([0-9a-f]+)\)")
_FIELD = re.compile(r"\b(n_ctx|n_seq_max|n_ubatch|n_batch)\s*=\s*" + WHOLE)
_FIELDS = {
    "n_ctx": "max_model_len",
    "n_seq_max": "max_num_seqs",
    "n_ubatch": "max_num_batched_tokens",
}
_TYPE_K = re.compile(r"type_k\s*=\s*'(\w+)'|\bK \((\w+)\):")
_MODEL = re.compile(r"general\.name\s+(?:str\s+)?=\s*(.+?)\s*$|loaded meta data .* from (\S+)")
_KEYS = {
    **log_words.COMMON_KEYS,
    "m": "model",
    "c": "max_model_len",
    "ctx_size": "max_model_len",
    "np": "max_num_seqs",
    "parallel": "max_num_seqs",
    "ub": "max_num_batched_tokens",
    "ubatch_size": "max_num_batched_tokens",
    "cache_type_k": "kv_cache_dtype",
}


class LlamaCpp:
    """llama.cpp's ``llama-server``."""

    name = "llama.cpp"
    aliases = ("llamacpp", "llama-cpp", "llama-server")
    knobs = (
        Knob(
            "max_model_len",
            "-c/--ctx-size",
            ("-c", "--ctx-size"),
            "context cells (default: --context x --parallel)",
            ("ctx_size",),
        ),
        Knob(
            "max_num_seqs",
            "-np/--parallel",
            ("-np", "--parallel"),
            "slots (default 1)",
            ("parallel",),
        ),
        Knob(
            "max_num_batched_tokens",
            "-ub/--ubatch-size",
            ("-ub", "--ubatch-size"),
            f"micro-batch (default {UBATCH})",
            ("ubatch_size",),
        ),
        Knob(
            "kv_cache_dtype",
            "--cache-type-k/--cache-type-v",
            ("--cache-type-k",),
            "KV type: f16 (default), q8_0, q4_0...",
            ("cache_type_k", "cache_type"),
        ),
    )
    kv_cache_types: dict[str, str | None] = {name: name for name in KV_TYPES}
    split = "layers split over"
    # Its layer split runs the layers one card after the other: pipeline parallel at batch 1.
    parallelism = {
        "pp": "-sm layer over {n} GPUs (its default)",
        "dp": "{n} llama-server processes, one per GPU (CUDA_VISIBLE_DEVICES), behind a router",
    }
    split_strategy = "pp"
    log_marks = re.compile(
        r"\bllama_(?:model|kv_cache|context|init|new_context)|load_tensors:|"
        r"ggml_cuda_init|llm_load_tensors|llama-server"
    )
    command_marks = re.compile(r"llama-server\s+(.*)$")
    setup_keys = _KEYS
    probes = ("/props",)
    generic = False
    serves_reads = (
        "engine and build (/props)",
        "allocation from its log (model and KV buffers in MiB, cells)",
    )

    def check_split(self, spec: ModelSpec, gpus: int, where: str = "GPU count") -> None:
        # It splits whole layers, not attention heads: any count of GPUs will do.
        if isinstance(gpus, bool) or not isinstance(gpus, int) or not (1 <= gpus <= 1024):
            raise GpufitError(f"{where} must be a whole number 1-1024, got {gpus!r}")

    def allreduce_kind(self, ranks: int, nvlink: bool, p2p: bool) -> str:
        return "nccl"  # its layer split sends activations between cards; no all-reduce kernel

    def plan(
        self, spec: ModelSpec, precision: str, gpu: Gpu, gpus: int, knobs: EngineKnobs
    ) -> EnginePlan:
        """Layers split over the GPUs (``-sm layer``); the cache holds ``-c`` cells on every
        layer (sliding layers keep window + ubatch x slots cells); a compute buffer of one
        micro-batch."""
        usable, source = usable_bytes(gpu)
        kv_name = knobs.kv_cache_dtype or "f16"
        elem = KV_TYPES[kv_name]
        kv = spec.kv
        layers = kv.full_layers + kv.sliding_layers
        # -sm layer gives each GPU whole layers: the busiest holds ceil(layers / N) of them (80
        # layers over 6 cards: 14, not 13.3), and more cards than layers leave some empty.
        blocks = spec.num_layers or layers
        share = math.ceil(blocks / gpus) / blocks if blocks else 1 / gpus
        weights = int(estimate(spec, precision, 1).weights_bytes * share)
        per_token = int(layers * kv.elements_per_token_layer * elem * share)
        length = knobs.max_model_len or spec.max_position_embeddings or 4096
        slots = knobs.max_num_seqs or PARALLEL
        ubatch = knobs.max_num_batched_tokens or UBATCH
        # -c cells are shared by the -np slots: each slot's context is what the model must reach.
        _, reason = model_len(spec, dataclasses.replace(knobs, max_model_len=length // slots))
        swa_cells = min(length, (kv.window or length) * slots + ubatch)
        cache = kv.full_layers * length + kv.sliding_layers * swa_cells
        kv_bytes = int(cache * kv.elements_per_token_layer * elem * share)
        compute = ubatch * (4 * spec.hidden_size + spec.vocab_size) * 4
        runtime = RUNTIME_OVERHEAD_BYTES
        need = weights + kv_bytes + compute + runtime
        gb = GIB
        if reason is None and need > usable:
            reason = (
                f"model {weights / gb:.2f} + KV cache {kv_bytes / gb:.2f} + compute "
                f"{compute / gb:.2f} + runtime {runtime / gb:.2f} GiB per GPU exceed the "
                f"{usable / gb:.2f} GiB usable; lower -c or quantize"
            )
        return EnginePlan(
            name=self.name,
            tensor_parallel=gpus,
            usable_bytes_per_gpu=usable,
            budget_bytes_per_gpu=usable,
            weights_bytes_per_gpu=weights,
            kv_bytes_per_token_per_gpu=per_token,
            activation_bytes_per_gpu=compute,
            runtime_bytes_per_gpu=runtime,
            cuda_graph_bytes_per_gpu=0,
            kv_cache_bytes_per_gpu=kv_bytes,
            kv_cache_tokens=length,
            max_concurrency=float(slots),
            starts=reason is None,
            reason=reason,
            max_model_len=length,
            kv_cache_dtype=kv_name,
            usable_source=source,
        )

    def log_lines(self, plan: EnginePlan) -> list[str]:
        mib = 2**20
        return [
            f"load_tensors: CUDA0 model buffer size = {plan.weights_bytes_per_gpu / mib:.2f} MiB",
            f"llama_kv_cache: size = {plan.kv_cache_bytes_per_gpu / mib:.2f} MiB "
            f"({plan.kv_cache_tokens} cells)",
            f"llama_context: CUDA0 compute buffer size = "
            f"{plan.activation_bytes_per_gpu / mib:.2f} MiB",
        ]

    def knobs_for(self, context: int | None, batch: int, model_max: int | None) -> dict[str, Any]:
        # -c cells are shared by the -np slots: each of `batch` slots holds `context` tokens.
        per_slot = context or model_max or 4096
        return {"max_model_len": per_slot * batch, "max_num_seqs": batch}

    # ---- its log ----------------------------------------------------------------------------

    def read_allocation(self, lines: Sequence[str]) -> EngineAllocation:
        weights: list[float] = []
        kv_gib = None
        kv_tokens = device = None
        kv_buffers: dict[str, float] = {}
        hits: list[str] = []
        for line in lines:
            hit = False
            if found := _KV_BUF.search(line):
                kv_buffers[found.group(1)] = num(found.group(2))
                device, hit = "GPU", True
            elif found := _MODEL_BUF.search(line):
                weights.append(num(found.group(2)) / 1024)
                hit = True
            if found := _KV_SIZE.search(line):
                kv_tokens, hit = int(num(found.group(2))), True
                if not kv_buffers:
                    kv_gib = num(found.group(1)) / 1024
            elif found := _KV_CELLS.search(line):
                kv_tokens, hit = int(num(found.group(1))), True
            if hit:
                hits.append(line.strip())
        if kv_buffers:  # per device; the largest is what one card must hold
            kv_gib = max(kv_buffers.values()) / 1024
        return EngineAllocation(
            weights_gib=max(weights) if weights else None,
            kv_cache_gib=round(kv_gib, 4) if kv_gib is not None else None,
            kv_cache_tokens=kv_tokens,
            kv_device=device,
            lines=tuple(hits),
        )

    def read_setup_line(self, line: str, found: dict[str, Any]) -> str | None:
        for key, value in _FIELD.findall(line):
            if key in _FIELDS:
                found[_FIELDS[key]] = int(value)
        if match := _TYPE_K.search(line):
            found["kv_cache_dtype"] = match.group(1) or match.group(2)
        if (match := _MODEL.search(line)) and "model" not in found:
            found["model"] = (match.group(1) or match.group(2)).strip()
        if match := _VERSION.search(line):
            return f"b{match.group(1)}-{match.group(2)}"
        return None

    def is_rank_line(self, line: str) -> bool:
        return False

    def knobs_from_setup(self, setup: LogSetup) -> dict[str, Any]:
        return {
            "max_model_len": setup.max_model_len,
            "max_num_seqs": setup.max_num_seqs,
            "max_num_batched_tokens": setup.max_num_batched_tokens,
            "kv_cache_dtype": setup.kv_cache_dtype,
        }

    # ---- its server -------------------------------------------------------------------------

    def identify(self, answers: Mapping[str, Any]) -> EngineFacts | None:
        props = answers.get("/props")
        if isinstance(props, dict) and ("build_info" in props or "total_slots" in props):
            build = props.get("build_info")
            return EngineFacts(self.name, str(build) if build else None, "/props")
        return None


ENGINE: Engine = LlamaCpp()
