"""What an engine says about itself: its server's answers and its start-up log, as records.

Plain frozen dataclasses, filled by the engine modules (``engines/vllm.py``...) and read by the
serving gate and ``gpufit calibrate``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineFacts:
    """The engine behind an endpoint and its version, as the server itself says (or None)."""

    engine: str | None
    version: str | None
    source: str | None  # the endpoint that said so


@dataclass(frozen=True)
class EngineAllocation:
    """What an engine's start-up log says it set aside (GiB per device; tokens for the whole setup).

    ``weights_gib`` is the largest per-device weights figure (vLLM "Model loading took", one
    line per tensor-parallel rank; SGLang "Load weight end ... mem usage"; llama.cpp "CUDA0 model
    buffer size"); ``kv_cache_gib`` the KV cache memory per device; ``kv_cache_tokens`` the
    cache's capacity in tokens (vLLM "GPU KV cache size", SGLang "#tokens", llama.cpp cells);
    ``kv_cache_blocks`` vLLM's older "# GPU blocks" (tokens = blocks x block size, 16 unless the
    log says otherwise); ``kv_device`` is "GPU" or "CPU" as the log says.
    """

    weights_gib: float | None = None
    kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    kv_device: str | None = None
    max_concurrency: float | None = None
    concurrency_tokens: int | None = None
    kv_cache_blocks: int | None = None
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogSetup:
    """What a server log states about its own setup (None where it does not say).

    ``model`` is the path or id the engine was started with; ``dtype`` the activation dtype
    (``bfloat16``...); ``quantization`` the engine's method name (``fp8``, ``awq``...).
    """

    engine: str | None = None
    version: str | None = None
    model: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    tensor_parallel: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool | None = None
    block_size: int | None = None
    gpu_memory_gib: float | None = None  # the device's total memory, where the log states it
    ranks_seen: int | None = None  # worker ranks that logged (vLLM "rank=N"/"TP N", SGLang "TPN")
    moe_backend: str | None = None  # vLLM's MXFP4 MoE backend ("Using Triton backend")


@dataclass(frozen=True)
class EngineLog:
    """One server log read: the setup it states and the allocation figures it reports."""

    setup: LogSetup
    allocation: EngineAllocation

    @property
    def recognised(self) -> bool:
        return bool(self.allocation.lines) or self.setup != LogSetup(engine=self.setup.engine)
