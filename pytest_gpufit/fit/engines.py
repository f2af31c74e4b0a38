"""What a serving engine does with a card: its memory budget, KV cache and whether it starts.

``plan(spec, precision, gpu, tensor_parallel, knobs)`` follows what the engine allocates, in
the order it allocates it (vLLM: weights, one profiling run, non-torch memory, then the KV
cache fills the rest of ``gpu_memory_utilization`` of the card). Constants set from measured
logs say so, with the rows behind them, in docs/fit.md ("Engine profiles").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.estimate import (
    KV_DTYPES,
    RUNTIME_OVERHEAD_BYTES,
    activation_bytes_per_gpu,
    check_precision,
    check_tensor_parallel,
    estimate,
    kv_bytes_per_token_per_gpu,
    lacks_kernel,
    role_formats,
    runtime_bytes_per_gpu,
    usable_bytes,
    weights_per_gpu,
)
from pytest_gpufit.fit.spec import ModelSpec
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.units import GIB

ENGINES = ("vllm", "sglang", "llama.cpp", "transformers")

# ---- vLLM (calibrated on vLLM 0.19.0, H100; fixtures/calibration/) ----------------------------
VLLM_GPU_MEMORY_UTILIZATION = 0.9
VLLM_MAX_NUM_SEQS = 256
VLLM_MAX_NUM_BATCHED_TOKENS = 8192
VLLM_BLOCK_SIZE = 16  # tokens per KV page: "GPU KV cache size" is a whole number of pages
# Non-torch memory that grows during the profiling run and is charged to the budget: cuBLAS
# workspaces at TP 1 (0.25, 0.25, 0.25, 0.27 GiB in four rows), NCCL and custom all-reduce
# buffers at TP >= 2 (2.07, 2.13, 2.07 GiB: median).
VLLM_NON_TORCH_TP1 = int(0.25 * GIB)
VLLM_NON_TORCH_TPN = int(2.07 * GIB)
# The CUDA context at worker start (0.51 GiB at TP 1; 1.53, 1.55, 2.01 at TP >= 2: median):
# allocated before the budget is measured, so it comes out of the (1 - utilization) margin.
VLLM_CONTEXT_TP1 = int(0.51 * GIB)
VLLM_CONTEXT_TPN = int(1.55 * GIB)
# The CUDA-graph pool, captured after the KV cache is allocated, also from the margin: median
# of the seven rows (0.67-1.84 GiB). Not part of the budget in vLLM 0.19.
VLLM_CUDA_GRAPH_POOL = int(0.91 * GIB)
# The sampler's dummy pass over max_num_seqs x vocab logits (fp32 logits, temperature, sorted
# values and int64 indices for top-k/top-p, softmax, cumsum...): bytes per logit, set from the
# Llama-3.1-8B bf16 TP 1 row (1.89 GiB peak less the 0.25 GiB forward term).
VLLM_SAMPLER_BYTES_PER_LOGIT = 54

# ---- SGLang (not calibrated: no public figures held here yet) -----------------------------
SGLANG_MEM_FRACTION_STATIC = 0.88

# ---- llama.cpp ------------------------------------------------------------------------------
LLAMA_CPP_UBATCH = 512
LLAMA_CPP_PARALLEL = 1
# ggml block formats: bytes per element including the block scale.
LLAMA_CPP_KV_TYPES = {
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
_VLLM_KV = {"auto": None, "bfloat16": "bf16", "float16": "fp16", "fp8": "fp8"}
_VLLM_KV.update({"fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "bf16": "bf16", "fp16": "fp16"})
_KV_NAMES: dict[str, tuple[str, ...]] = {
    "vllm": tuple(_VLLM_KV),
    "sglang": ("auto", "fp8_e4m3", "fp8_e5m2", "bf16", "bfloat16", "fp16", "float16"),
    "llama.cpp": tuple(LLAMA_CPP_KV_TYPES),
    "transformers": ("auto", *KV_DTYPES),
}

# What each engine calls a knob, for messages.
_KNOB_NAMES: dict[str, dict[str, str]] = {
    "vllm": {
        "gpu_memory_utilization": "--gpu-memory-utilization",
        "max_model_len": "--max-model-len",
        "max_num_seqs": "--max-num-seqs",
        "max_num_batched_tokens": "--max-num-batched-tokens",
        "kv_cache_dtype": "--kv-cache-dtype",
        "enforce_eager": "--enforce-eager",
    },
    "sglang": {
        "gpu_memory_utilization": "--mem-fraction-static",
        "max_model_len": "--context-length",
        "max_num_seqs": "--max-running-requests",
        "max_num_batched_tokens": "--chunked-prefill-size",
        "kv_cache_dtype": "--kv-cache-dtype",
        "enforce_eager": "--disable-cuda-graph",
    },
    "llama.cpp": {
        "max_model_len": "-c/--ctx-size",
        "max_num_seqs": "-np/--parallel",
        "max_num_batched_tokens": "-ub/--ubatch-size",
        "kv_cache_dtype": "--cache-type-k/--cache-type-v",
    },
    "transformers": {
        "max_model_len": "--max-model-len (tokens per sequence)",
        "max_num_seqs": "--max-num-seqs (batch)",
        "kv_cache_dtype": "--kv-cache-dtype",
    },
}
# Other spellings accepted by parse_knobs: the engine's own option names.
_ALIASES = {
    "mem_fraction_static": "gpu_memory_utilization",
    "context_length": "max_model_len",
    "ctx_size": "max_model_len",
    "max_running_requests": "max_num_seqs",
    "parallel": "max_num_seqs",
    "chunked_prefill_size": "max_num_batched_tokens",
    "ubatch_size": "max_num_batched_tokens",
    "cache_type_k": "kv_cache_dtype",
    "cache_type": "kv_cache_dtype",
    "disable_cuda_graph": "enforce_eager",
}
_WHOLE_LIMITS = {
    "max_model_len": 10**9,
    "max_num_seqs": 10**6,
    "max_num_batched_tokens": 10**8,
}


@dataclass(frozen=True)
class EngineKnobs:
    """One engine's knobs; ``None`` is the engine's own default."""

    engine: str
    gpu_memory_utilization: float | None = None  # vLLM (0.9); SGLang --mem-fraction-static
    max_model_len: int | None = None  # vLLM --max-model-len; llama.cpp -c
    max_num_seqs: int | None = None  # vLLM (256); llama.cpp -np
    max_num_batched_tokens: int | None = None  # vLLM chunk (8192); llama.cpp -ub
    kv_cache_dtype: str | None = None
    enforce_eager: bool = False  # no CUDA-graph pool


def check_engine(engine: object, where: str = "--engine") -> str:
    if not isinstance(engine, str) or engine.strip().lower() not in ENGINES:
        raise GpufitError(f"{where}: unknown engine {engine!r}; accepted: {', '.join(ENGINES)}")
    return engine.strip().lower()


def _knob_name(engine: str, field: str) -> str:
    return _KNOB_NAMES.get(engine, {}).get(field, "--" + field.replace("_", "-"))


def _whole(engine: str, field: str, value: object) -> int:
    top = _WHOLE_LIMITS[field]
    name = _knob_name(engine, field)
    expected = f"{name} must be a whole number from 1 to {top:,}, got {value!r}"
    if isinstance(value, bool):
        raise GpufitError(expected)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        if not (text.isascii() and text.isdigit()):  # '²' passes isdigit alone
            raise GpufitError(expected)
        value = int(text)
    if not isinstance(value, int) or not 1 <= value <= top:
        raise GpufitError(expected)
    return value


def _fraction(engine: str, value: object) -> float:
    name = _knob_name(engine, "gpu_memory_utilization")
    expected = f"{name} must be a fraction of the card above 0 and at most 1, got {value!r}"
    if isinstance(value, bool):
        raise GpufitError(expected)
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii():
            raise GpufitError(expected)
        try:
            value = float(text)
        except ValueError:
            raise GpufitError(expected) from None
    if not isinstance(value, (int, float)) or not (0 < value <= 1):  # NaN fails both
        raise GpufitError(expected)
    return float(value)


def parse_knobs(engine: str, **raw: Any) -> EngineKnobs:
    """Checked knobs for ``engine``; ``None`` values are the engine's defaults.

    >>> parse_knobs("vllm", gpu_memory_utilization="0.95").gpu_memory_utilization
    0.95
    >>> parse_knobs("vllm", gpu_memory_utilization=1.5)
    Traceback (most recent call last):
    ...
    pytest_gpufit.errors.GpufitError: --gpu-memory-utilization must be a fraction of the card \
above 0 and at most 1, got 1.5
    """
    name = check_engine(engine)
    values: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(EngineKnobs)} - {"engine"}
    for key, value in raw.items():
        field = _ALIASES.get(key, key)
        if field not in fields:
            raise GpufitError(f"unknown {name} knob {key!r}; accepted: {', '.join(sorted(fields))}")
        if value is None or (field == "enforce_eager" and value is False):
            continue
        if field not in _KNOB_NAMES[name]:
            raise GpufitError(
                f"{_knob_name('vllm', field)} does not apply to {name}; its knobs: "
                f"{', '.join(_KNOB_NAMES[name].values())}"
            )
        if field == "gpu_memory_utilization":
            values[field] = _fraction(name, value)
        elif field == "kv_cache_dtype":
            text = str(value).strip().lower()
            if text not in _KV_NAMES[name]:
                raise GpufitError(
                    f"{_knob_name(name, field)} {value!r} is not a {name} KV cache type; "
                    f"accepted: {', '.join(_KV_NAMES[name])}"
                )
            values[field] = text
        elif field == "enforce_eager":
            if not isinstance(value, bool):
                raise GpufitError(
                    f"{_knob_name(name, field)} is a flag (true/false), got {value!r}"
                )
            values[field] = value
        else:
            values[field] = _whole(name, field, value)
    return EngineKnobs(name, **values)


@dataclass(frozen=True)
class EnginePlan:
    """The ``engine`` object of ``gpufit fit --json``: what the engine would allocate per GPU.

    Budget-internal: weights, activations (the profiling peak) and runtime (non-torch memory
    charged to the budget); the KV cache takes what remains. Outside the budget, in the margin
    the engine leaves: the CUDA context (``context_bytes_per_gpu``) and the CUDA-graph pool.
    """

    name: str
    tensor_parallel: int
    usable_bytes_per_gpu: int
    budget_bytes_per_gpu: int
    weights_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    activation_bytes_per_gpu: int
    runtime_bytes_per_gpu: int
    cuda_graph_bytes_per_gpu: int
    kv_cache_bytes_per_gpu: int
    kv_cache_tokens: int
    max_concurrency: float
    starts: bool
    reason: str | None
    context_bytes_per_gpu: int = 0
    max_model_len: int = 0
    kv_cache_dtype: str = ""
    usable_source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def log_lines(self) -> list[str]:
        """The figures as the engine's own log words them, to hold side by side."""
        gib = GIB
        tp = f" (per GPU, TP {self.tensor_parallel})" if self.tensor_parallel > 1 else ""
        if self.name == "vllm":
            lines = [
                f"Model loading took {self.weights_bytes_per_gpu / gib:.2f} GiB memory{tp}",
                f"torch peak memory increase: {self.activation_bytes_per_gpu / gib:.2f}GiB; "
                f"non-torch memory: {self.runtime_bytes_per_gpu / gib:.2f}GiB",
                f"Available KV cache memory: {self.kv_cache_bytes_per_gpu / gib:.2f} GiB",
            ]
            if self.starts:
                lines += [
                    f"GPU KV cache size: {self.kv_cache_tokens:,} tokens",
                    f"Maximum concurrency for {self.max_model_len:,} tokens per request: "
                    f"{self.max_concurrency:.2f}x",
                ]
        elif self.name == "sglang":
            lines = [
                f"Load weight end. mem usage={self.weights_bytes_per_gpu / gib:.2f} GB{tp}",
                f"KV Cache is allocated. #tokens: {self.kv_cache_tokens}, "
                f"size: {self.kv_cache_bytes_per_gpu / gib:.2f} GB",
                f"max_total_num_tokens={self.kv_cache_tokens}, context_len={self.max_model_len}",
            ]
        elif self.name == "llama.cpp":
            mib = 2**20
            lines = [
                "load_tensors: CUDA0 model buffer size = "
                f"{self.weights_bytes_per_gpu / mib:.2f} MiB",
                f"llama_kv_cache: size = {self.kv_cache_bytes_per_gpu / mib:.2f} MiB "
                f"({self.kv_cache_tokens} cells)",
                f"llama_context: CUDA0 compute buffer size = "
                f"{self.activation_bytes_per_gpu / mib:.2f} MiB",
            ]
        else:
            lines = [
                f"weights {self.weights_bytes_per_gpu / gib:.2f} GiB per GPU{tp}, "
                f"KV cache {self.kv_cache_bytes_per_gpu / gib:.2f} GiB "
                f"({self.kv_cache_tokens:,} tokens), activations "
                f"{self.activation_bytes_per_gpu / gib:.2f} GiB",
            ]
        if not self.starts:
            lines.append(f"does not start: {self.reason}")
        return lines


def plan(
    spec: ModelSpec, precision: str, gpu: Gpu, tensor_parallel: int, knobs: EngineKnobs
) -> EnginePlan:
    """What ``knobs.engine`` allocates for ``spec`` at ``precision`` on ``tensor_parallel``
    cards like ``gpu``; a bad TP size or precision is a ``GpufitError``."""
    engine = check_engine(knobs.engine, "engine")
    precision = check_precision(precision)
    if engine != "llama.cpp":  # llama.cpp splits layers, not heads
        check_tensor_parallel(spec, tensor_parallel)
    elif (
        isinstance(tensor_parallel, bool)
        or not isinstance(tensor_parallel, int)
        or not (1 <= tensor_parallel <= 1024)
    ):
        raise GpufitError(f"GPU count must be a whole number 1-1024, got {tensor_parallel!r}")
    if engine == "vllm":
        the_plan = _vllm(spec, precision, gpu, tensor_parallel, knobs)
    elif engine == "sglang":
        the_plan = _sglang(spec, precision, gpu, tensor_parallel, knobs)
    elif engine == "llama.cpp":
        the_plan = _llama_cpp(spec, precision, gpu, tensor_parallel, knobs)
    else:
        the_plan = _transformers(spec, precision, gpu, tensor_parallel, knobs)
    fmt = estimate(spec, precision, 1).weight_format
    if the_plan.starts and lacks_kernel(fmt, gpu):
        # The memory would do, the kernels are missing (fp8 on a CC 7.5 T4): no engine runs it.
        return dataclasses.replace(
            the_plan,
            starts=False,
            reason=f"no {fmt} kernel on CC {gpu.cc_text}, native or weight-only (the fit "
            "table's 'unsupported precision')",
        )
    return the_plan


def _act_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def _model_len(spec: ModelSpec, knobs: EngineKnobs) -> tuple[int, str | None]:
    """The engine's max_model_len and, when it exceeds the model's maximum, why it refuses."""
    top = spec.max_position_embeddings
    length = knobs.max_model_len or top or 8192
    if top and length > top:
        name = _knob_name(knobs.engine, "max_model_len")
        return length, (
            f"{name} {length:,} exceeds the model's max_position_embeddings {top:,}; "
            "the engine refuses it (the positions were never trained)"
        )
    return length, None


def _rope_cache(spec: ModelSpec, act_bytes: int) -> int:
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


def _engine_weights(spec: ModelSpec, precision: str, tp: int, engine: str) -> int:
    est = estimate(spec, precision, 1)
    weights = weights_per_gpu(spec, precision, tp, total=est.weights_bytes)
    fmt, _ = role_formats(spec, precision)
    if engine in ("vllm", "sglang"):
        if fmt["experts"] == "mxfp4" and spec.params.experts:
            from pytest_gpufit.fit.estimate import bytes_per_weight

            experts = spec.params.experts * bytes_per_weight("mxfp4") / tp
            weights += int(experts * (mxfp4_padding(spec, tp) - 1))
        weights += _rope_cache(spec, 4 if spec.model_type == "gpt_oss" else _act_bytes(precision))
    return weights


def _kv_dtype(precision: str, knobs: EngineKnobs) -> tuple[str, int]:
    name = knobs.kv_cache_dtype
    key = None if name in (None, "auto") else _VLLM_KV.get(name, name)
    if key not in KV_DTYPES:  # auto: the activation dtype
        key = "fp32" if precision == "fp32" else "fp16" if precision == "fp16" else "bf16"
    return key, KV_DTYPES[key]


def _request_bytes(spec: ModelSpec, per_token: int, length: int) -> int:
    """Cache one request of ``length`` tokens needs on a rank: sliding layers keep a window."""
    kv = spec.kv
    layers = kv.full_layers + kv.sliding_layers
    if not layers:
        return 0
    window = min(length, kv.window) if kv.window else length
    return per_token * (kv.full_layers * length + kv.sliding_layers * window) // layers


def vllm_activation_bytes(spec: ModelSpec, precision: str, tp: int, knobs: EngineKnobs) -> int:
    """vLLM's profiling peak: one prefill chunk of max_num_batched_tokens (the residual stream
    and its normed copies; for MoE the top_k expert outputs and the fused kernel's gate/up
    output) plus the sampler's pass over max_num_seqs x vocab logits. The dense MLP's
    intermediates are freed before the sampler peak: the measured peak does not shrink with TP."""
    chunk = knobs.max_num_batched_tokens or VLLM_MAX_NUM_BATCHED_TOKENS
    seqs = knobs.max_num_seqs or VLLM_MAX_NUM_SEQS
    per_token = 4 * spec.hidden_size
    if spec.experts_per_token:
        inter = 2 * spec.expert_intermediate_size / tp
        per_token += int(spec.experts_per_token * (spec.hidden_size + inter))
    forward = chunk * per_token * _act_bytes(precision)
    return forward + seqs * spec.vocab_size * VLLM_SAMPLER_BYTES_PER_LOGIT


def _vllm(spec: ModelSpec, precision: str, gpu: Gpu, tp: int, knobs: EngineKnobs) -> EnginePlan:
    usable, source = usable_bytes(gpu)
    util = knobs.gpu_memory_utilization or VLLM_GPU_MEMORY_UTILIZATION
    budget = int(usable * util)
    weights = _engine_weights(spec, precision, tp, "vllm")
    kv_name, kv_b = _kv_dtype(precision, knobs)
    per_token = kv_bytes_per_token_per_gpu(spec, kv_b, tp)
    acts = vllm_activation_bytes(spec, precision, tp, knobs)
    runtime = VLLM_NON_TORCH_TP1 if tp == 1 else VLLM_NON_TORCH_TPN
    context = VLLM_CONTEXT_TP1 if tp == 1 else VLLM_CONTEXT_TPN
    graphs = 0 if knobs.enforce_eager else VLLM_CUDA_GRAPH_POOL
    available = budget - weights - acts - runtime
    blocks = max(available, 0) // (per_token * VLLM_BLOCK_SIZE) if per_token else 0
    tokens = blocks * VLLM_BLOCK_SIZE
    length, reason = _model_len(spec, knobs)
    one = _request_bytes(spec, per_token, length)
    concurrency = round(max(available, 0) / one, 2) if one else 0.0
    gb = GIB
    chunk = knobs.max_num_batched_tokens or VLLM_MAX_NUM_BATCHED_TOKENS
    seqs = knobs.max_num_seqs or VLLM_MAX_NUM_SEQS
    if reason is None and chunk < seqs:  # SchedulerConfig._verify_args refuses it
        reason = (
            f"--max-num-batched-tokens {chunk:,} is smaller than --max-num-seqs {seqs:,}; vLLM "
            "refuses the setting (every scheduled sequence needs a token of the batch)"
        )
    if reason is None and weights > budget:
        reason = (
            f"weights need {weights / gb:.2f} GiB per GPU, more than the "
            f"{budget / gb:.2f} GiB budget ({util:g} x {usable / gb:.2f} GiB usable): "
            "CUDA out of memory while loading, or no memory left for the KV cache"
        )
    elif reason is None and available <= 0:
        reason = (
            f"no memory for the KV cache: weights {weights / gb:.2f} + activations "
            f"{acts / gb:.2f} + runtime {runtime / gb:.2f} GiB exceed the {budget / gb:.2f} "
            f"GiB budget; raise --gpu-memory-utilization or add GPUs"
        )
    elif reason is None and available < one:
        reason = (
            f"to serve one request of max_model_len {length:,} tokens, {one / gb:.2f} GiB KV "
            f"cache is needed, more than the {available / gb:.2f} GiB available; lower "
            "--max-model-len or raise --gpu-memory-utilization"
        )
    elif reason is None and context + graphs > usable - budget:
        reason = (
            f"the CUDA context ({context / gb:.2f} GiB) and CUDA-graph pool "
            f"({graphs / gb:.2f} GiB) do not fit in the {(usable - budget) / gb:.2f} GiB left "
            "outside --gpu-memory-utilization; lower it or pass --enforce-eager"
        )
    return EnginePlan(
        name="vllm",
        tensor_parallel=tp,
        usable_bytes_per_gpu=usable,
        budget_bytes_per_gpu=budget,
        weights_bytes_per_gpu=weights,
        kv_bytes_per_token_per_gpu=per_token,
        activation_bytes_per_gpu=acts,
        runtime_bytes_per_gpu=runtime,
        cuda_graph_bytes_per_gpu=graphs,
        kv_cache_bytes_per_gpu=max(available, 0),
        kv_cache_tokens=tokens,
        max_concurrency=concurrency,
        starts=reason is None,
        reason=reason,
        context_bytes_per_gpu=context,
        max_model_len=length,
        kv_cache_dtype=kv_name,
        usable_source=source,
    )


def _sglang(spec: ModelSpec, precision: str, gpu: Gpu, tp: int, knobs: EngineKnobs) -> EnginePlan:
    """SGLang: weights and the KV pool share ``mem_fraction_static`` of the card; activations
    and CUDA graphs live in the rest. Not calibrated (structure from SGLang's model_runner)."""
    usable, source = usable_bytes(gpu)
    frac = knobs.gpu_memory_utilization or SGLANG_MEM_FRACTION_STATIC
    budget = int(usable * frac)
    weights = _engine_weights(spec, precision, tp, "sglang")
    kv_name, kv_b = _kv_dtype(precision, knobs)
    per_token = kv_bytes_per_token_per_gpu(spec, kv_b, tp)
    context = runtime_bytes_per_gpu(tp)
    available = budget - weights - context
    tokens = max(available, 0) // per_token if per_token else 0
    chunk = knobs.max_num_batched_tokens or VLLM_MAX_NUM_BATCHED_TOKENS
    acts = activation_bytes_per_gpu(spec, chunk, 1, _act_bytes(precision), tp)
    graphs = 0 if knobs.enforce_eager else VLLM_CUDA_GRAPH_POOL
    length, reason = _model_len(spec, knobs)
    one = _request_bytes(spec, per_token, length)
    gb = GIB
    if reason is None and available <= 0:
        reason = (
            f"weights {weights / gb:.2f} GiB and runtime {context / gb:.2f} GiB per GPU leave "
            f"nothing of the {budget / gb:.2f} GiB static pool ({frac:g} x usable) for the KV "
            "cache; raise --mem-fraction-static or add GPUs"
        )
    elif reason is None and acts + graphs > usable - budget:
        reason = (
            f"activations ({acts / gb:.2f} GiB) and CUDA graphs ({graphs / gb:.2f} GiB) do not "
            f"fit in the {(usable - budget) / gb:.2f} GiB outside --mem-fraction-static"
        )
    return EnginePlan(
        name="sglang",
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


def _llama_cpp(
    spec: ModelSpec, precision: str, gpu: Gpu, gpus: int, knobs: EngineKnobs
) -> EnginePlan:
    """llama.cpp: layers split over the GPUs (``-sm layer``); the cache holds ``-c`` cells
    on every layer (sliding layers keep window + ubatch x slots cells); a compute buffer of
    one micro-batch. Not calibrated."""
    usable, source = usable_bytes(gpu)
    kv_name = knobs.kv_cache_dtype or "f16"
    elem = LLAMA_CPP_KV_TYPES[kv_name]
    kv = spec.kv
    layers = kv.full_layers + kv.sliding_layers
    # -sm layer gives each GPU whole layers: the busiest holds ceil(layers / N) of them (80
    # layers over 6 cards: 14, not 13.3), and more cards than layers leave some empty.
    blocks = spec.num_layers or layers
    share = math.ceil(blocks / gpus) / blocks if blocks else 1 / gpus
    weights = int(estimate(spec, precision, 1).weights_bytes * share)
    per_token = int(layers * kv.elements_per_token_layer * elem * share)
    length = knobs.max_model_len or spec.max_position_embeddings or 4096
    slots = knobs.max_num_seqs or LLAMA_CPP_PARALLEL
    ubatch = knobs.max_num_batched_tokens or LLAMA_CPP_UBATCH
    # -c cells are shared by the -np slots: each slot's context is what the model must reach.
    _, reason = _model_len(spec, dataclasses.replace(knobs, max_model_len=length // slots))
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
        name="llama.cpp",
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


def _transformers(
    spec: ModelSpec, precision: str, gpu: Gpu, tp: int, knobs: EngineKnobs
) -> EnginePlan:
    """transformers ``generate``: no budget; weights, the cache of ``max_num_seqs`` sequences
    of ``max_model_len`` and a prefill over them must fit the usable memory."""
    usable, source = usable_bytes(gpu)
    length, reason = _model_len(spec, knobs)
    batch = knobs.max_num_seqs or 1
    weights = weights_per_gpu(spec, precision, tp, total=estimate(spec, precision, 1).weights_bytes)
    kv_key, kv_b = _kv_dtype(precision, knobs)
    per_token = kv_bytes_per_token_per_gpu(spec, kv_b, tp)
    acts = activation_bytes_per_gpu(spec, length, batch, _act_bytes(precision), tp)
    runtime = runtime_bytes_per_gpu(tp)
    one = _request_bytes(spec, per_token, length)
    left = usable - weights - acts - runtime
    gb = GIB
    if reason is None and left < one * batch:
        reason = (
            f"weights {weights / gb:.2f} + activations {acts / gb:.2f} + runtime "
            f"{runtime / gb:.2f} + KV cache {one * batch / gb:.2f} GiB per GPU exceed the "
            f"{usable / gb:.2f} GiB usable"
        )
    return EnginePlan(
        name="transformers",
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


# ---- the `gpufit fit --engine` options ------------------------------------------------------

# CLI option -> (knob field, the engines it belongs to). One option per engine spelling, so a
# llama.cpp flag given with --engine vllm is an error, not silently taken.
CLI_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "--gpu-memory-utilization": ("gpu_memory_utilization", ("vllm",)),
    "--mem-fraction-static": ("gpu_memory_utilization", ("sglang",)),
    "--max-model-len": ("max_model_len", ("vllm", "sglang", "transformers")),
    "--max-num-seqs": ("max_num_seqs", ("vllm", "sglang", "transformers")),
    "--max-num-batched-tokens": ("max_num_batched_tokens", ("vllm", "sglang")),
    "--kv-cache-dtype": ("kv_cache_dtype", ("vllm", "sglang", "transformers")),
    "--enforce-eager": ("enforce_eager", ("vllm", "sglang")),
    "--ctx-size": ("max_model_len", ("llama.cpp",)),
    "--parallel": ("max_num_seqs", ("llama.cpp",)),
    "--ubatch-size": ("max_num_batched_tokens", ("llama.cpp",)),
    "--cache-type-k": ("kv_cache_dtype", ("llama.cpp",)),
}


def knobs_from_options(engine: str | None, options: dict[str, Any]) -> EngineKnobs | None:
    """Knobs from ``gpufit fit`` options (``{"--max-model-len": "8192", ...}``, None = not
    given); None without ``--engine``. An option of another engine, or one without
    ``--engine``, is an error naming it."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    if engine is None:
        if given:
            raise GpufitError(
                f"{', '.join(given)}: engine knobs need --engine ({', '.join(ENGINES)})"
            )
        return None
    name = check_engine(engine)
    raw: dict[str, Any] = {}
    for option, value in given.items():
        field, owners = CLI_OPTIONS[option]
        if name not in owners:
            others = [o for o, (f, e) in CLI_OPTIONS.items() if f == field and name in e]
            hint = f"; {name} spells it {others[0]}" if others else ""
            raise GpufitError(f"{option} is a {'/'.join(owners)} option, not {name}'s{hint}")
        if field in raw:
            raise GpufitError(f"{option}: given twice (as another spelling too)")
        raw[field] = value
    try:
        return parse_knobs(name, **raw)
    except GpufitError as error:
        raise GpufitError(f"--engine {name}: {error}") from None


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
    split = "layers split over" if p.name == "llama.cpp" else "tensor parallel"
    head = (
        f"{setup_id}: {p.name}, {split} {p.tensor_parallel} on {gpu.name}: "
        f"usable {p.usable_bytes_per_gpu / gib:.2f} GiB per GPU ({p.usable_source}), "
        f"budget {p.budget_bytes_per_gpu / gib:.2f} GiB"
    )
    verdict = "starts" if p.starts else "DOES NOT START"
    return [head, *(f"  {line}" for line in p.log_lines()), f"  => {verdict}"]
