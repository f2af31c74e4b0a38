"""vLLM: its knobs, its memory plan (calibrated on vLLM 0.19.0, H100; fixtures/calibration/), the
words of its start-up log, its ``/version`` and ``/metrics``.

The plan follows what vLLM allocates, in the order it allocates it: weights, one profiling run,
non-torch memory, then the KV cache fills the rest of ``gpu_memory_utilization`` of the card.
The log formats are vLLM's own words after its ``INFO MM-DD hh:mm:ss [file.py:line]`` prefix,
for example (v0.8 to v0.32)::

    [gpu_model_runner.py:4820] Model loading took 53.75 GiB memory and 37.946043 seconds
    [gpu_worker.py:436] Available KV cache memory: 18.16 GiB
    [kv_cache_utils.py:1711] GPU KV cache size: 6,288 tokens
    [kv_cache_utils.py:1716] Maximum concurrency for 8,192 tokens per request: 1.50x

(the CPU build prints ``CPU KV cache size: N tokens``, sometimes on the same line as the
concurrency); older releases wrote "Model loading took 15.1749 GB" and "Loading model weights
took 67.7 GB", a figure vLLM computed in GiB (divided by 2**30) and labelled GB.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_gpufit.engines import log_words
from pytest_gpufit.engines.log_words import NUMBER, WHOLE, num
from pytest_gpufit.engines.planning import (
    MOE_BACKENDS,
    act_bytes,
    custom_allreduce_kind,
    interconnect,
    kv_dtype,
    model_len,
    served_weights,
)
from pytest_gpufit.engines.protocol import Engine, EngineKnobs, EnginePlan, Knob
from pytest_gpufit.engines.records import EngineAllocation, EngineFacts, LogSetup
from pytest_gpufit.fit.estimate import (
    check_tensor_parallel,
    kv_bytes_per_token_per_gpu,
    role_formats,
    usable_bytes,
)
from pytest_gpufit.fit.spec import ModelSpec
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.units import GIB

GPU_MEMORY_UTILIZATION = 0.9
MAX_NUM_SEQS = 256
MAX_NUM_BATCHED_TOKENS = 8192
BLOCK_SIZE = 16  # tokens per KV page: "GPU KV cache size" is a whole number of pages
# Non-torch memory that grows during the profiling run and is charged to the budget: cuBLAS
# workspaces at TP 1 (0.25, 0.25, 0.25, 0.27 GiB in four rows), NCCL and custom all-reduce
# buffers at TP >= 2 over NVLink/NVSwitch (H100 SXM: 2.07, 2.13, 2.07 GiB: median), where
# NCCL's NVLS and vLLM's symmetric-memory all-reduce keep large buffers.
NON_TORCH_TP1 = int(0.25 * GIB)
NON_TORCH_TPN = int(2.07 * GIB)
# The same at TP >= 2 over PCIe, where neither exists (and vLLM's custom all-reduce, at TP 2
# with P2P only, keeps an 8 MiB buffer): 0.25 GiB, 2x RTX 4090 without P2P (vllm#13061,
# fixtures/calibration/pcie-tp.tsv, the one calibration row). P2P on or off is not resolved
# by any row held here; the figure is used for both.
NON_TORCH_PCIE_TPN = int(0.25 * GIB)
# The CUDA context at worker start (0.51 GiB at TP 1; 1.53, 1.55, 2.01 at TP >= 2: median):
# allocated before the budget is measured, so it comes out of the (1 - utilization) margin.
CONTEXT_TP1 = int(0.51 * GIB)
CONTEXT_TPN = int(1.55 * GIB)
# The CUDA-graph pool, captured after the KV cache is allocated, also from the margin: median
# of the seven rows (0.67-1.84 GiB). Not part of the budget in vLLM 0.19.
CUDA_GRAPH_POOL = int(0.91 * GIB)
# The sampler's dummy pass over max_num_seqs x vocab logits (fp32 logits, temperature, sorted
# values and int64 indices for top-k/top-p, softmax, cumsum...): bytes per logit, set from the
# Llama-3.1-8B bf16 TP 1 row (1.89 GiB peak less the 0.25 GiB forward term).
SAMPLER_BYTES_PER_LOGIT = 54

KV_CACHE_TYPES: dict[str, str | None] = {
    "auto": None,
    "bfloat16": "bf16",
    "float16": "fp16",
    "fp8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "bf16": "bf16",
    "fp16": "fp16",
}

# ---- its log --------------------------------------------------------------------------------
_WEIGHTS = re.compile(
    r"(?:Model loading took|Loading model weights took)\s+" + NUMBER + r"\s*GiB|"
    r"(?:Model loading took|Loading model weights took)\s+" + NUMBER + r"\s*GB"
)
_AVAILABLE = re.compile(r"Available KV cache memory:\s*" + NUMBER + r"\s*GiB")
_PROFILE_KV = re.compile(r"Memory profiling results:.*?\bkv_cache_size=" + NUMBER + r"\s*GiB")
_KV_TOKENS = re.compile(r"\b(GPU|CPU) KV cache size:\s*" + NUMBER + r"\s*tokens")
BLOCKS = re.compile(r"# GPU blocks:\s*" + NUMBER)
_CONCURRENCY = re.compile(
    r"Maximum concurrency for\s+" + NUMBER + r"\s+tokens per request:\s*" + NUMBER + r"x"
)
_VERSION = re.compile(r"LLM engine \(v([0-9][^)\s]*)\)|API server version\s+([0-9]\S*)")
_MAX_LEN = re.compile(r"Using max model len\s+" + WHOLE)
_LOADING = re.compile(r"Starting to load model (\S+?)(?:\.\.\.)?\s*$")
_CHUNK = re.compile(r"max_num_batched_tokens=" + WHOLE)
_TOTAL_MEM = re.compile(r"total_gpu_memory=" + NUMBER + r"\s*GiB")
_UTIL = re.compile(r"gpu_memory_utilization=([0-9]+(?:\.[0-9]+)?)")
# Its MXFP4 MoE backend choice (mxfp4.py get_mxfp4_backend), in the names --moe-backend takes.
_MOE_BACKEND = re.compile(
    r"\bUsing (Marlin|Triton) backend\b|Using FlashInfer MXFP4 (BF16|MXFP8 CUTLASS) backend "
    r"for (SM90|SM100)"
)
_KEYS = {
    **log_words.COMMON_KEYS,
    "model_tag": "model",
    "tensor_parallel_size": "tensor_parallel",
    "tp": "tensor_parallel",
    "max_model_len": "max_model_len",
    "max_seq_len": "max_model_len",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "kv_cache_dtype": "kv_cache_dtype",
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "enforce_eager": "enforce_eager",
    "block_size": "block_size",
}
# ---- its /metrics ---------------------------------------------------------------------------
_INFO_LINE = re.compile(r"^vllm:cache_config_info\{(?P<labels>.*)\}\s+\S+\s*$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def activation_bytes(spec: ModelSpec, precision: str, tp: int, knobs: EngineKnobs) -> int:
    """vLLM's profiling peak: one prefill chunk of max_num_batched_tokens (the residual stream
    and its normed copies; for MoE the top_k expert outputs and the fused kernel's gate/up
    output) plus the sampler's pass over max_num_seqs x vocab logits. The dense MLP's
    intermediates are freed before the sampler peak: the measured peak does not shrink with TP."""
    chunk = knobs.max_num_batched_tokens or MAX_NUM_BATCHED_TOKENS
    seqs = knobs.max_num_seqs or MAX_NUM_SEQS
    per_token = 4 * spec.hidden_size
    if spec.experts_per_token:
        inter = 2 * spec.expert_intermediate_size / tp
        per_token += int(spec.experts_per_token * (spec.hidden_size + inter))
    forward = chunk * per_token * act_bytes(precision)
    return forward + seqs * spec.vocab_size * SAMPLER_BYTES_PER_LOGIT


def parse_cache_config_info(metrics: str) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` in a ``/metrics`` text ({} when absent).

    >>> text = '''# TYPE vllm:cache_config_info gauge
    ... vllm:cache_config_info{block_size="16",kv_cache_size_tokens="3141",num_gpu_blocks="6"} 1'''
    >>> info = parse_cache_config_info(text)
    >>> info["kv_cache_size_tokens"], info["num_gpu_blocks"], info["block_size"]
    ('3141', '6', '16')
    """
    for line in metrics.splitlines():
        match = _INFO_LINE.match(line.strip())
        if match:
            return {k: v for k, v in _LABEL.findall(match.group("labels"))}
    return {}


def kv_tokens_from_metrics(labels: Mapping[str, str]) -> int | None:
    """KV cache capacity in tokens from cache_config_info labels: the stated size, else blocks x
    block size (older vLLM lists only ``num_gpu_blocks``).

    >>> kv_tokens_from_metrics({"kv_cache_size_tokens": "314187", "num_gpu_blocks": "652"})
    314187
    >>> kv_tokens_from_metrics({"num_gpu_blocks": "573", "block_size": "16"})
    9168
    >>> kv_tokens_from_metrics({"num_gpu_blocks": "None", "block_size": "16"}) is None
    True
    """
    try:
        if labels.get("kv_cache_size_tokens") not in (None, "", "None"):
            return int(labels["kv_cache_size_tokens"])
        return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
    except (KeyError, ValueError):
        return None


def request_pages(spec: ModelSpec, length: int, chunk: int) -> int:
    """KV pages (16 tokens of one layer) one request of ``length`` tokens may hold, as vLLM's
    ``max_memory_usage_bytes`` counts them (its max concurrency and its "one request fits"
    check): whole pages on full layers; on a sliding layer the window less one plus a prefill
    chunk, and one page more (the window need not start on a page boundary).

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> request_pages(load_spec("qwen3-0.6b"), 1000, 8192)  # 28 layers x 63 pages
    1764
    >>> request_pages(load_spec("gpt-oss-20b"), 131072, 8192)  # 12 x 8,192 + 12 x 521
    104556
    """
    kv = spec.kv
    full = kv.full_layers * -(-length // BLOCK_SIZE)
    if not kv.sliding_layers:
        return full
    window = min((kv.window or length) - 1 + chunk, length)
    return full + kv.sliding_layers * (-(-window // BLOCK_SIZE) + 1)


def runtime_bytes(tp: int, link: str) -> int:
    """Non-torch memory charged to the budget per rank: cuBLAS at TP 1; at TP >= 2 the
    all-reduce buffers of the link (NVLink's, where the link is unknown: the larger figure).

    >>> runtime_bytes(2, "pcie") < runtime_bytes(2, "nvlink") == runtime_bytes(2, "unknown")
    True
    """
    if tp == 1:
        return NON_TORCH_TP1
    return NON_TORCH_PCIE_TPN if link == "pcie" else NON_TORCH_TPN


def _mxfp4_experts(spec: ModelSpec, precision: str) -> bool:
    return bool(spec.params.experts) and role_formats(spec, precision)[0]["experts"] == "mxfp4"


def _backend_name(match: re.Match[str]) -> str:
    """``Using Triton backend`` -> triton; the FlashInfer BF16 backend pads like TRT-LLM's on
    SM100 (256) and like CUTLASS's on SM90 (128)."""
    if match.group(1):
        return match.group(1).lower()
    if match.group(2) == "BF16" and match.group(3) == "SM100":
        return "flashinfer-trtllm"
    return "flashinfer-cutlass"


class Vllm:
    """vLLM (``vllm serve``)."""

    name = "vllm"
    aliases: tuple[str, ...] = ()
    knobs = (
        Knob(
            "gpu_memory_utilization",
            "--gpu-memory-utilization",
            ("--gpu-memory-utilization",),
            f"0-1 (default {GPU_MEMORY_UTILIZATION})",
        ),
        Knob(
            "max_model_len",
            "--max-model-len",
            ("--max-model-len",),
            "tokens per request (default: --context, else the model's maximum)",
        ),
        Knob(
            "max_num_seqs",
            "--max-num-seqs",
            ("--max-num-seqs",),
            f"requests at once (default {MAX_NUM_SEQS})",
        ),
        Knob(
            "max_num_batched_tokens",
            "--max-num-batched-tokens",
            ("--max-num-batched-tokens",),
            f"prefill chunk (default {MAX_NUM_BATCHED_TOKENS})",
        ),
        Knob("kv_cache_dtype", "--kv-cache-dtype", ("--kv-cache-dtype",), "auto, fp8, bf16..."),
        Knob("enforce_eager", "--enforce-eager", ("--enforce-eager",), "no CUDA graphs"),
        Knob(
            "moe_backend",
            "--moe-backend",
            ("--moe-backend",),
            "MXFP4 MoE kernels: marlin (default), triton, flashinfer-trtllm, flashinfer-cutlass "
            "(the log's 'Using ... backend'; each pads the experts its own way)",
            choices=tuple(MOE_BACKENDS),
        ),
    )
    kv_cache_types = KV_CACHE_TYPES
    split = "tensor parallel"
    # The ways to use N cards, as vLLM is launched for each (docs/fit.md, "A second card").
    parallelism = {
        "tp": "--tensor-parallel-size {n}",
        "pp": "--pipeline-parallel-size {n}",
        "dp": "--data-parallel-size {n} (or {n} servers behind a router)",
        "ep": "--tensor-parallel-size {n} --enable-expert-parallel",
    }
    split_strategy = "tp"
    log_marks = re.compile(
        r"vllm|gpu_model_runner|kv_cache_utils|LLM engine|# GPU blocks|"
        r"Model loading took|Loading model weights took"
    )
    command_marks = re.compile(r"(?:vllm serve|vllm\.entrypoints\.openai\.api_server)\s+(.*)$")
    setup_keys = _KEYS
    probes = ("/version",)
    generic = True  # servers copy its /version, other logs echo its words
    serves_reads = (
        "engine and version (/version)",
        "allocation from its log (weights, KV cache GiB and tokens, max concurrency)",
        "KV cache tokens from /metrics (vllm:cache_config_info)",
    )

    def check_split(self, spec: ModelSpec, gpus: int, where: str = "tensor parallel") -> None:
        check_tensor_parallel(spec, gpus, where)

    def allreduce_kind(self, ranks: int, nvlink: bool, p2p: bool) -> str:
        return custom_allreduce_kind(ranks, nvlink, p2p)

    def plan(
        self, spec: ModelSpec, precision: str, gpu: Gpu, tp: int, knobs: EngineKnobs
    ) -> EnginePlan:
        usable, source = usable_bytes(gpu)
        util = knobs.gpu_memory_utilization or GPU_MEMORY_UTILIZATION
        budget = int(usable * util)
        weights = served_weights(spec, precision, tp, gpu, knobs.moe_backend)
        kv_name, kv_b = kv_dtype(precision, knobs, KV_CACHE_TYPES)
        per_token = kv_bytes_per_token_per_gpu(spec, kv_b, tp)
        acts = activation_bytes(spec, precision, tp, knobs)
        link = interconnect(gpu)
        runtime = runtime_bytes(tp, link.kind)
        context = CONTEXT_TP1 if tp == 1 else CONTEXT_TPN
        graphs = 0 if knobs.enforce_eager else CUDA_GRAPH_POOL
        available = budget - weights - acts - runtime
        blocks = max(available, 0) // (per_token * BLOCK_SIZE) if per_token else 0
        tokens = blocks * BLOCK_SIZE
        length, reason = model_len(spec, knobs)
        gb = GIB
        chunk = knobs.max_num_batched_tokens or MAX_NUM_BATCHED_TOKENS
        seqs = knobs.max_num_seqs or MAX_NUM_SEQS
        # In pages of one layer (every layer's page the same size): the pool's over one
        # request's, as get_max_concurrency_for_kv_cache_config divides them.
        layers = spec.kv.full_layers + spec.kv.sliding_layers
        pages = request_pages(spec, length, chunk)
        one = per_token * BLOCK_SIZE * pages // layers
        concurrency = round(blocks * layers / pages, 2) if pages else 0.0
        if reason is None and chunk < seqs:  # SchedulerConfig._verify_args refuses it
            reason = (
                f"--max-num-batched-tokens {chunk:,} is smaller than --max-num-seqs {seqs:,}; "
                "vLLM refuses the setting (every scheduled sequence needs a token of the batch)"
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
                f"to serve one request of max_model_len {length:,} tokens, {one / gb:.2f} GiB "
                f"KV cache is needed, more than the {available / gb:.2f} GiB available; lower "
                "--max-model-len or raise --gpu-memory-utilization"
            )
        elif reason is None and context + graphs > usable - budget:
            reason = (
                f"the CUDA context ({context / gb:.2f} GiB) and CUDA-graph pool "
                f"({graphs / gb:.2f} GiB) do not fit in the {(usable - budget) / gb:.2f} GiB left "
                "outside --gpu-memory-utilization; lower it or pass --enforce-eager"
            )
        return EnginePlan(
            name=self.name,
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
            interconnect=link.text if tp > 1 else "",
            moe_backend=(knobs.moe_backend or "marlin") if _mxfp4_experts(spec, precision) else "",
        )

    def log_lines(self, plan: EnginePlan) -> list[str]:
        gib = GIB
        tp = f" (per GPU, TP {plan.tensor_parallel})" if plan.tensor_parallel > 1 else ""
        lines = [
            f"Model loading took {plan.weights_bytes_per_gpu / gib:.2f} GiB memory{tp}",
            f"torch peak memory increase: {plan.activation_bytes_per_gpu / gib:.2f}GiB; "
            f"non-torch memory: {plan.runtime_bytes_per_gpu / gib:.2f}GiB",
            f"Available KV cache memory: {plan.kv_cache_bytes_per_gpu / gib:.2f} GiB",
        ]
        if plan.starts:
            lines += [
                f"GPU KV cache size: {plan.kv_cache_tokens:,} tokens",
                f"Maximum concurrency for {plan.max_model_len:,} tokens per request: "
                f"{plan.max_concurrency:.2f}x",
            ]
        return lines

    def knobs_for(self, context: int | None, batch: int, model_max: int | None) -> dict[str, Any]:
        if batch > MAX_NUM_SEQS:  # a prefill chunk of >= 1 token per sequence
            chunk = batch if batch > MAX_NUM_BATCHED_TOKENS else None
            return {
                "max_model_len": context,
                "max_num_seqs": batch,
                "max_num_batched_tokens": chunk,
            }
        return {"max_model_len": context}

    # ---- its log ----------------------------------------------------------------------------

    def read_allocation(self, lines: Sequence[str]) -> EngineAllocation:
        weights: list[float] = []
        kv_gib = conc = None
        kv_tokens = device = conc_tokens = blocks = None
        hits: list[str] = []
        for line in lines:
            hit = False
            for match in _WEIGHTS.finditer(line):
                weights.append(num(match.group(1) or match.group(2)))
                hit = True
            if found := _AVAILABLE.search(line) or _PROFILE_KV.search(line):
                kv_gib, hit = num(found.group(1)), True
            if found := _KV_TOKENS.search(line):
                device, kv_tokens, hit = found.group(1), int(num(found.group(2))), True
            if found := BLOCKS.search(line):
                blocks, device, hit = int(num(found.group(1))), "GPU", True
            if found := _CONCURRENCY.search(line):
                conc_tokens, conc, hit = int(num(found.group(1))), num(found.group(2)), True
            if hit:
                hits.append(line.strip())
        return EngineAllocation(
            weights_gib=max(weights) if weights else None,
            kv_cache_gib=round(kv_gib, 4) if kv_gib is not None else None,
            kv_cache_tokens=kv_tokens,
            kv_device=device,
            max_concurrency=conc,
            concurrency_tokens=conc_tokens,
            kv_cache_blocks=blocks,
            lines=tuple(hits),
        )

    def read_setup_line(self, line: str, found: dict[str, Any]) -> str | None:
        if "with config:" in line or "non-default args" in line:
            log_words.take(found, log_words.config_pairs(line), _KEYS, overwrite=True)
        if match := _MAX_LEN.search(line):
            found["max_model_len"] = int(match.group(1))
        if (match := _CHUNK.search(line)) and "max_num_batched_tokens" not in found:
            found["max_num_batched_tokens"] = int(match.group(1))
        if match := _UTIL.search(line):
            found["gpu_memory_utilization"] = float(match.group(1))
        if match := _TOTAL_MEM.search(line):
            found["gpu_memory_gib"] = num(match.group(1))
        if match := _MOE_BACKEND.search(line):
            found["moe_backend"] = _backend_name(match)
        if match := _LOADING.search(line):
            found.setdefault("model", match.group(1))
        if match := _VERSION.search(line):
            return match.group(1) or match.group(2)
        return None

    def is_rank_line(self, line: str) -> bool:
        return "took" in line

    def knobs_from_setup(self, setup: LogSetup) -> dict[str, Any]:
        kv = setup.kv_cache_dtype
        return {
            "gpu_memory_utilization": setup.gpu_memory_utilization,
            "max_model_len": setup.max_model_len,
            "max_num_seqs": setup.max_num_seqs,
            "max_num_batched_tokens": setup.max_num_batched_tokens,
            # fp8_e4m3 / fp8_e5m2: one byte either way
            "kv_cache_dtype": "fp8" if kv and kv.startswith("fp8") else kv,
            "enforce_eager": bool(setup.enforce_eager),
            "moe_backend": setup.moe_backend,
        }

    # ---- its server -------------------------------------------------------------------------

    def identify(self, answers: Mapping[str, Any]) -> EngineFacts | None:
        version = answers.get("/version")
        if isinstance(version, dict) and version.get("version"):
            return EngineFacts(self.name, str(version["version"]), "/version")
        return None


ENGINE: Engine = Vllm()
