"""Memory a model needs at a precision, context and batch; the verdict per GPU setup.

Every formula and constant is written down, with its source, in docs/fit.md. Constants marked
CALIBRATE are only as good as their check on a real card.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.spec import ModelSpec
from pytest_gpufit.hardware.catalog import catalog
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.units import GIB

MIB = 2**20
# CUDA context + cuBLAS workspaces + kernels loaded by torch, one process on one GPU: vLLM 0.19
# on an H100 measures 0.76 GiB (worker init 0.51 + non-torch 0.25; docs/fit.md, calibration).
RUNTIME_OVERHEAD_BYTES = 768 * MIB
# The same per rank at tensor parallel >= 2: a CUDA context per rank plus NCCL and custom
# all-reduce buffers. Median of the three TP >= 2 calibration rows (3.60, 3.68, 4.08 GiB).
RUNTIME_TP_OVERHEAD_BYTES = int(3.68 * GIB)
# Without a measured ``usable_mib`` in the catalog, CUDA is taken to allocate all but 1% of
# NVML's total (the H100 measures 0.57% less: 79.19 of 79.65 GiB); erring towards "no".
USABLE_DEFAULT_RESERVE_FRACTION = 0.01
# CALIBRATE: caching-allocator rounding and fragmentation, as a fraction of what is allocated.
ALLOCATOR_RESERVE_FRACTION = 0.02
DEFAULT_CONTEXT = 8192

# Bytes per weight, scales included: (bits per weight, scale bytes, weights per scale).
_FORMATS: dict[str, tuple[float, float, int]] = {
    "fp32": (32, 0, 1),
    "bf16": (16, 0, 1),
    "fp16": (16, 0, 1),
    "fp8": (8, 4, 128 * 128),  # e4m3, one fp32 scale per 128x128 block (DeepSeek-V3 format)
    "int8": (8, 2, 4096),  # one fp16 scale per output channel (~4096 inputs)
    "int4": (4, 2.5, 128),  # AWQ/GPTQ: fp16 scale + 4-bit zero point per group of 128
    "nvfp4": (4, 1, 16),  # e2m1, one fp8 (e4m3) scale per 16
    "mxfp4": (4, 1, 32),  # e2m1, one e8m0 scale per 32 (OCP MX)
}
PRECISIONS = ("fp32", "bf16", "fp16", "fp8", "int8", "int4", "fp4", "nvfp4", "mxfp4", "stored")
KV_DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
# The lowest compute capability with a working non-native path (weight-only or emulated kernels:
# vLLM's Marlin fp8 and Mxfp4Config.get_min_capability() == 80; int4 Marlin/AWQ kernels from 7.5).
_EMULATED_FROM = {
    "bf16": (7, 0),
    "fp8": (8, 0),
    "int8": (7, 0),
    "int4": (7, 5),
    "nvfp4": (8, 0),
    "mxfp4": (8, 0),
}


def bytes_per_weight(fmt: str) -> float:
    """Bytes per weight with its scales.

    >>> bytes_per_weight("bf16"), bytes_per_weight("mxfp4")
    (2.0, 0.53125)
    """
    bits, scale_bytes, per_scale = _FORMATS[fmt]
    return bits / 8 + scale_bytes / per_scale


# Other names accepted for a precision (torch names, ``auto``, the quantizer names).
PRECISION_ALIASES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    "auto": "stored",
    "fp4": "nvfp4",
    "awq": "int4",
    "gptq": "int4",
}


def check_precision(dtype: str) -> str:
    """The canonical precision for a ``dtype`` argument (``requires_fit``, ``gpufit fit``).

    >>> check_precision("bfloat16"), check_precision("AWQ")
    ('bf16', 'int4')
    """
    if not isinstance(dtype, str):
        raise GpufitError(f"precision must be a string such as 'bf16', got {dtype!r}")
    key = dtype.lower().strip()
    key = PRECISION_ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise GpufitError(f"unknown precision {dtype!r}; accepted: {', '.join(PRECISIONS)}")
    return key


@dataclass(frozen=True)
class MemoryEstimate:
    """What one instance of a model needs on one device (``total_bytes``)."""

    model: str
    dtype: str
    weight_format: str  # the format most weights are in (for native/emulated judgement)
    kv_dtype: str
    context: int
    batch: int
    params_total: int
    params_active: int
    weights_bytes: int
    weights_source: str
    kv_bytes_per_token: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    total_bytes: int
    decode_bytes_per_token: int  # weights read per decode step, plus the KV at this context
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["warnings"] = list(self.warnings)
        return data


_ROLES = (
    "embedding",
    "lm_head",
    "attention",
    "dense_mlp",
    "experts",
    "shared_experts",
    "router",
    "norms",
)


def role_formats(spec: ModelSpec, precision: str) -> tuple[dict[str, str], str]:
    """The format of each parameter role at ``precision``, and the main (most weights) one."""
    fmt = {r: "bf16" for r in _ROLES}
    main = precision
    if precision == "stored":
        base = spec.stored_dtype
        fmt = {r: base for r in _ROLES}
        main = base
        if spec.quantization:
            for role in spec.quantization.roles:
                fmt[role] = spec.quantization.dtype
            main = spec.quantization.dtype
    elif precision in ("fp32", "bf16", "fp16"):
        fmt = {r: precision for r in _ROLES}
    else:
        for role in ("attention", "dense_mlp", "experts", "shared_experts"):
            fmt[role] = precision  # quantizers convert linear layers; embeddings, norms stay
    return fmt, main


def role_bytes(spec: ModelSpec, precision: str) -> dict[str, float]:
    """Bytes of each parameter role (``Params`` fields), with the modules a checkpoint keeps
    unquantized (its ignore list) counted at the checkpoint's float format, module by module."""
    p = spec.params
    fmt, _ = role_formats(spec, precision)
    out = {r: getattr(p, r) * bytes_per_weight(fmt[r]) for r in _ROLES}
    q = spec.quantization
    if precision == "stored" and q is not None and q.unquantized:
        base = bytes_per_weight(spec.stored_dtype)
        for role, count in q.unquantized:
            if role in q.roles:  # these parameters are stored in the float format instead
                out[role] += count * (base - bytes_per_weight(fmt[role]))
    return out


def _weights(spec: ModelSpec, precision: str) -> tuple[int, int, str, str]:
    """(all weight bytes, bytes a decode step reads, the main format, where the figure is from)."""
    p = spec.params
    fmt, main = role_formats(spec, precision)
    total = sum(role_bytes(spec, precision).values())
    # A decode step reads every non-expert weight, the active experts, and one embedding row.
    active = {r: getattr(p, r) for r in _ROLES}
    active.update(experts=p.experts_active, embedding=p.embedding if p.tied else 0)
    read = sum(active[r] * bytes_per_weight(fmt[r]) for r in _ROLES)
    source = "config.json"
    ckpt = spec.checkpoint
    if ckpt is not None:
        if precision == "stored":
            return ckpt.total_bytes, int(read), main, "safetensors headers (exact)"
        if precision in ("fp32", "bf16", "fp16") and spec.quantization is None:
            exact = ckpt.float_elements * bytes_per_weight(precision) + ckpt.other_bytes
            return int(exact), int(read), main, "safetensors headers (exact element counts)"
    return int(total), int(read), main, source


# ---- tensor parallelism ----------------------------------------------------------------------


def check_tensor_parallel(spec: ModelSpec, tp: int, where: str = "tensor parallel") -> None:
    """vLLM's and SGLang's rule: TP divides the attention heads, and the KV heads divide TP
    or TP divides them (each rank holds whole KV heads, replicated when TP > KV heads)."""
    if _not_whole(tp) or not 1 <= tp <= 1024:
        raise GpufitError(
            f"{where}: tensor-parallel size must be a whole number 1-1024, got {tp!r}"
        )
    heads, kv = spec.num_attention_heads, spec.num_kv_heads
    if heads % tp:
        raise GpufitError(
            f"{where}: {tp} GPUs do not divide the {heads} attention "
            f"heads of {spec.name}; use a TP size that divides {heads}"
        )
    if spec.kv.kind != "mla" and (kv % tp if tp <= kv else tp % kv):
        raise GpufitError(
            f"{where}: {tp} GPUs and the {kv} KV heads of {spec.name} "
            f"do not divide one another; use a TP size that divides {kv} or a multiple of it"
        )


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """KV heads each rank caches: at least one, so heads are replicated when TP > KV heads."""
    return max(1, spec.num_kv_heads // tp)


def kv_bytes_per_token_per_gpu(spec: ModelSpec, kv_bytes: int, tp: int = 1) -> int:
    """One more token of cache on each rank, every layer counted (vLLM's page per token).

    MLA's compressed latent is not split by heads: every rank keeps it whole.
    """
    kv = spec.kv
    layers = kv.full_layers + kv.sliding_layers
    if kv.kind == "mla":
        return layers * kv.elements_per_token_layer * kv_bytes
    per_head = kv.elements_per_token_layer // spec.num_kv_heads  # k and v of one head
    return layers * per_head * kv_heads_per_rank(spec, tp) * kv_bytes


def weights_per_gpu(spec: ModelSpec, precision: str, tp: int, total: int | None = None) -> int:
    """Weight bytes on each of ``tp`` ranks: linear layers, embedding and LM head are split;
    norms, the router, MLA's latent projections and (when TP > KV heads) the k/v projections
    are whole on every rank. ``total`` (an exact checkpoint figure) is split in the same ratio.
    """
    if tp == 1 and total is not None:
        return total
    roles = role_bytes(spec, precision)
    all_bytes = sum(roles.values())
    if tp == 1 or all_bytes == 0:
        return int(total if total is not None else all_bytes)
    p = spec.params
    attn_fmt = roles["attention"] / p.attention if p.attention else 0.0
    kv_part = p.attention_kv * attn_fmt
    latent = p.attention_replicated * attn_fmt
    split_attention = roles["attention"] - kv_part - latent
    kv_share = kv_part * kv_heads_per_rank(spec, tp) / spec.num_kv_heads
    split = sum(roles[r] for r in ("embedding", "lm_head", "dense_mlp", "experts"))
    split += roles["shared_experts"] + split_attention
    whole = roles["norms"] + roles["router"] + latent
    per_gpu = split / tp + kv_share + whole
    if total is not None:
        return int(total * per_gpu / all_bytes)
    return int(per_gpu)


def kv_cache_bytes(spec: ModelSpec, context: int, batch: int, kv_bytes: int) -> int:
    """KV cache for ``batch`` sequences of ``context`` tokens; sliding layers keep a window."""
    kv = spec.kv
    window = min(context, kv.window) if kv.window else context
    tokens = kv.full_layers * context + kv.sliding_layers * window
    return batch * tokens * kv.elements_per_token_layer * kv_bytes


def activation_bytes(spec: ModelSpec, context: int, batch: int, act_bytes: int) -> int:
    """Peak activations of a prefill over the whole context (SDPA: no context^2 term).

    Per token: the residual stream and its normed copies (4 x hidden), q/k/v, and the MLP's
    gate, up and activated outputs (3 x intermediate); plus fp32 logits of the last position.
    """
    per_token = (
        4 * spec.hidden_size
        + (spec.num_attention_heads + 2 * spec.num_kv_heads) * spec.head_dim
        + 3 * spec.intermediate_size
    )
    return batch * context * per_token * act_bytes + batch * spec.vocab_size * 4 * 2


def estimate(
    spec: ModelSpec,
    dtype: str = "bf16",
    context: int | None = None,
    batch: int = 1,
    kv_dtype: str | None = None,
    device: str = "cuda",
) -> MemoryEstimate:
    """Memory for one instance on one device. On ``device="cpu"`` there is no CUDA runtime
    (context, cuBLAS workspaces) and no caching allocator's reserve to count.

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> e = estimate(load_spec("llama-3.1-8b"), "bf16", context=8192)
    >>> round(e.weights_bytes / 1e9, 2), round(e.kv_cache_bytes / 2**30, 2)
    (16.06, 1.0)
    >>> estimate(load_spec("qwen3-0.6b"), context=8, device="cpu").overhead_bytes
    0
    """
    precision = check_precision(dtype)
    if context is not None and (_not_whole(context) or context < 1):
        raise GpufitError(f"context must be a whole number of tokens >= 1, got {context!r}")
    if _not_whole(batch) or batch < 1:
        raise GpufitError(f"batch must be a whole number >= 1, got {batch!r}")
    if context is None:
        context = min(DEFAULT_CONTEXT, spec.max_position_embeddings or DEFAULT_CONTEXT)
    act_dtype = "fp32" if precision == "fp32" else "fp16" if precision == "fp16" else "bf16"
    kv_key = check_kv_dtype(kv_dtype) if kv_dtype else act_dtype
    weights, read, main, source = _weights(spec, precision)
    kv_b = KV_DTYPES[kv_key]
    kv_total = kv_cache_bytes(spec, context, batch, kv_b)
    acts = activation_bytes(spec, context, batch, KV_DTYPES[act_dtype])
    overhead = RUNTIME_OVERHEAD_BYTES + int(
        ALLOCATOR_RESERVE_FRACTION * (weights + kv_total + acts)
    )
    if device == "cpu":
        overhead = 0
    warnings = list(spec.warnings)
    if context > (spec.max_position_embeddings or context):
        warnings.append(
            f"context {context} exceeds max_position_embeddings {spec.max_position_embeddings}"
        )
    return MemoryEstimate(
        model=spec.name,
        dtype=precision,
        weight_format=main,
        kv_dtype=kv_key,
        context=context,
        batch=batch,
        params_total=spec.params.total,
        params_active=spec.params.active,
        weights_bytes=weights,
        weights_source=source,
        kv_bytes_per_token=spec.kv.full_layers * spec.kv.elements_per_token_layer * kv_b
        + spec.kv.sliding_layers * spec.kv.elements_per_token_layer * kv_b,
        kv_cache_bytes=kv_total,
        activation_bytes=acts,
        overhead_bytes=overhead,
        total_bytes=weights + kv_total + acts + overhead,
        decode_bytes_per_token=read + kv_cache_bytes(spec, context, 1, kv_b),
        warnings=tuple(warnings),
    )


def _not_whole(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def check_kv_dtype(kv_dtype: str) -> str:
    key = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(kv_dtype, kv_dtype)
    if key not in KV_DTYPES:
        raise GpufitError(f"unknown KV cache dtype {kv_dtype!r}; accepted: {', '.join(KV_DTYPES)}")
    return key


# ---- verdict per GPU setup --------------------------------------------------------------------


@dataclass(frozen=True)
class GpuFit:
    """One model x precision on ``count`` identical cards, each copy split over all of them
    (tensor-parallel): memory and headroom are per card, the ceiling is per copy."""

    id: str
    name: str
    count: int
    memory_bytes: int  # per card
    fits: bool
    headroom_bytes: int  # per card, at the asked context
    max_context: int  # 0 when even one token does not fit
    instances: int
    precision_support: str  # native | emulated | unsupported
    decode_tok_s_ceiling: float | None
    per_card_bytes: int
    usable_bytes: int = 0  # per card: what CUDA can allocate; fits/headroom are judged on it
    split_error: str | None = None  # count cards cannot split the heads: it does not fit

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def runtime_bytes_per_gpu(tp: int) -> int:
    """Memory outside torch's tensors on each rank (CUDA context; NCCL at TP >= 2)."""
    return RUNTIME_OVERHEAD_BYTES if tp == 1 else RUNTIME_TP_OVERHEAD_BYTES


def usable_bytes(gpu: Gpu) -> tuple[int, str]:
    """What CUDA can allocate on the card, and where the figure comes from."""
    if gpu.catalog_id:
        entry = catalog().get(gpu.catalog_id, {})
        usable = entry.get("usable_mib")
        if isinstance(usable, (int, float)) and not isinstance(usable, bool) and usable > 0:
            return min(int(usable * MIB), gpu.memory_total_bytes), "catalog usable_mib"
    reserve = int(gpu.memory_total_bytes * USABLE_DEFAULT_RESERVE_FRACTION)
    return gpu.memory_total_bytes - reserve, "NVML total less 1% (no measured figure)"


def activation_bytes_per_gpu(
    spec: ModelSpec, context: int, batch: int, act_bytes: int, tp: int = 1
) -> int:
    """``activation_bytes`` on one of ``tp`` ranks: q/k/v and the MLP are split by heads and
    columns; the residual stream and the gathered logits are whole on every rank."""
    whole = 4 * spec.hidden_size
    split = (spec.num_attention_heads + 2 * spec.num_kv_heads) * spec.head_dim
    split += 3 * spec.intermediate_size
    per_token = whole + split / tp
    return int(batch * context * per_token * act_bytes) + batch * spec.vocab_size * 4 * 2


def per_card_bytes(spec: ModelSpec, est: MemoryEstimate, cards: int, context: int) -> int:
    """Weights, KV and activations on each of ``cards`` ranks (what TP does not split stays
    whole), the allocator's reserve, and each rank's own runtime."""
    return _per_card(spec, est, cards)(context)


def _per_card(spec: ModelSpec, est: MemoryEstimate, cards: int) -> Callable[[int], int]:
    """``per_card_bytes`` as a function of the context: the parts that do not depend on it are
    computed once (``max_context`` bisects over it for every table cell)."""
    kv_b = KV_DTYPES[est.kv_dtype]
    kv_share = 1.0
    if cards > 1:
        kv_share = kv_bytes_per_token_per_gpu(spec, kv_b, cards) / kv_bytes_per_token_per_gpu(
            spec, kv_b, 1
        )
    act_b = 4 if est.dtype == "fp32" else 2
    weights = weights_per_gpu(spec, est.dtype, cards, total=est.weights_bytes)
    runtime = runtime_bytes_per_gpu(cards)

    def need(context: int) -> int:
        kv = kv_cache_bytes(spec, context, est.batch, kv_b)
        if cards > 1:
            kv = int(kv * kv_share)
        acts = activation_bytes_per_gpu(spec, context, est.batch, act_b, cards)
        shared = weights + kv + acts
        return int(shared * (1 + ALLOCATOR_RESERVE_FRACTION)) + runtime

    return need


def precision_support(fmt: str, gpu: Gpu) -> str:
    """native, emulated (a weight-only or fallback kernel exists), or unsupported."""
    family = "fp8" if fmt.startswith("fp8") else fmt
    if family in gpu.native_dtypes or family in ("fp32", "fp16") and gpu.native_dtypes:
        return "native"
    if gpu.vendor != "nvidia" or gpu.compute_capability is None:
        return "unsupported"
    floor = _EMULATED_FROM.get(family)
    return "emulated" if floor and gpu.compute_capability >= floor else "unsupported"


def lacks_kernel(fmt: str, gpu: Gpu) -> bool:
    """True when an NVIDIA card of known compute capability has no kernel for ``fmt``, native
    or weight-only (fp8 on a CC 7.5 T4). Elsewhere "unsupported" means the catalog does not
    know, which is no evidence that the format cannot run."""
    known = gpu.vendor == "nvidia" and gpu.compute_capability is not None
    return known and precision_support(fmt, gpu) == "unsupported"


def max_context(spec: ModelSpec, est: MemoryEstimate, cards: int, memory: int) -> int:
    """The largest context (up to max_position_embeddings) that fits on the cards."""
    return _max_context(_per_card(spec, est, cards), spec.max_position_embeddings, memory)


def _max_context(need: Callable[[int], int], top: int | None, memory: int) -> int:
    if need(1) > memory:
        return 0
    low, high = 1, top or 1 << 20
    while low < high:
        mid = (low + high + 1) // 2
        if need(mid) <= memory:
            low = mid
        else:
            high = mid - 1
    return low


def fit_on(
    spec: ModelSpec, est: MemoryEstimate, gpu: Gpu, count: int = 1, setup_id: str | None = None
) -> GpuFit:
    """Judge the estimate on ``count`` cards like ``gpu`` (tensor-parallel when count > 1)
    against the memory CUDA can allocate on each (``usable_bytes``)."""
    memory, _ = usable_bytes(gpu)
    need_at = _per_card(spec, est, count)
    need = need_at(est.context)
    split_error = None
    if count > 1:
        try:
            check_tensor_parallel(spec, count)
        except GpufitError as error:  # 3 cards for 32 heads: no engine splits it, so no fit
            split_error = str(error)
    fits = need <= memory and split_error is None
    # Every copy is split over all the setup's cards, so instances are counted per card.
    instances = memory // need if fits else 0
    ceiling = None
    if gpu.memory_bandwidth_bytes_s:
        kv_one = kv_cache_bytes(spec, est.context, 1, KV_DTYPES[est.kv_dtype])
        read = est.decode_bytes_per_token + (est.batch - 1) * kv_one
        ceiling = round(est.batch * gpu.memory_bandwidth_bytes_s * count / read, 1)
    return GpuFit(
        id=setup_id or gpu.catalog_id or f"GPU{gpu.index}",
        name=gpu.name,
        count=count,
        memory_bytes=gpu.memory_total_bytes,
        fits=fits,
        headroom_bytes=memory - need,
        max_context=0
        if split_error
        else _max_context(need_at, spec.max_position_embeddings, memory),
        instances=int(instances),
        precision_support=precision_support(est.weight_format, gpu),
        decode_tok_s_ceiling=ceiling,
        per_card_bytes=need,
        usable_bytes=memory,
        split_error=split_error,
    )
