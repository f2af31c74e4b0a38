"""Engine facts: which engine and version a server is, and what its log says it allocated.

Pure functions over what the server answered (``engine_from``), over its start-up log
(``parse_engine_log``) and over its Prometheus text (``parse_cache_config_info``). The log
formats are vLLM's own words after its ``INFO MM-DD hh:mm:ss [file.py:line]`` prefix, for
example (v0.8 to v0.32)::

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
from dataclasses import dataclass
from typing import Any

# Probed in this order: the SGLang and llama.cpp endpoints say more than vLLM's ``/version``.
ENGINE_PROBES = ("/get_server_info", "/props", "/version")


@dataclass(frozen=True)
class EngineFacts:
    """The engine behind an endpoint and its version, as the server itself says (or None)."""

    engine: str | None
    version: str | None
    source: str | None  # the endpoint that said so


def engine_from(answers: Mapping[str, Any], owners: Sequence[str] = ()) -> EngineFacts:
    """Name the engine from its probe answers (path -> JSON or None) and ``owned_by`` fields.

    >>> engine_from({"/version": {"version": "0.32.0"}})
    EngineFacts(engine='vllm', version='0.32.0', source='/version')
    >>> engine_from({"/get_server_info": {"version": "0.5.4", "tp_size": 1}, "/version": None})
    EngineFacts(engine='sglang', version='0.5.4', source='/get_server_info')
    >>> engine_from({"/props": {"build_info": "b6100-abc", "total_slots": 4}})
    EngineFacts(engine='llama.cpp', version='b6100-abc', source='/props')
    >>> engine_from({}, owners=("transformers",))
    EngineFacts(engine='transformers', version=None, source='/v1/models owned_by')
    >>> engine_from({})
    EngineFacts(engine=None, version=None, source=None)
    """
    info = answers.get("/get_server_info")
    if isinstance(info, dict) and info.get("version"):
        return EngineFacts("sglang", str(info["version"]), "/get_server_info")
    props = answers.get("/props")
    if isinstance(props, dict) and ("build_info" in props or "total_slots" in props):
        build = props.get("build_info")
        return EngineFacts("llama.cpp", str(build) if build else None, "/props")
    version = answers.get("/version")
    if isinstance(version, dict) and version.get("version"):
        return EngineFacts("vllm", str(version["version"]), "/version")
    owner = next((o for o in owners if o), None)
    if owner:
        return EngineFacts(owner, None, "/v1/models owned_by")
    return EngineFacts(None, None, None)


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


@dataclass(frozen=True)
class EngineLog:
    """One server log read: the setup it states and the allocation figures it reports."""

    setup: LogSetup
    allocation: EngineAllocation

    @property
    def recognised(self) -> bool:
        return bool(self.allocation.lines) or self.setup != LogSetup(engine=self.setup.engine)


# Never ends on a comma; at most 32 characters before the point and 24 after, and no digit
# after it: a longer figure is no engine's (int() of 4,300+ digits raises, a float of it is
# inf), so the line is not recognised rather than read as a prefix of it.
_NUMBER = r"([0-9](?:[0-9,]{0,30}[0-9])?(?:\.[0-9]{1,24})?)(?![0-9])"
_WHOLE = r"([0-9]{1,18})(?![0-9])"  # a setup's whole number, same reason
_WEIGHTS = re.compile(
    r"(?:Model loading took|Loading model weights took)\s+" + _NUMBER + r"\s*GiB|"
    r"(?:Model loading took|Loading model weights took)\s+" + _NUMBER + r"\s*GB"
)
_AVAILABLE = re.compile(r"Available KV cache memory:\s*" + _NUMBER + r"\s*GiB")
_PROFILE_KV = re.compile(r"Memory profiling results:.*?\bkv_cache_size=" + _NUMBER + r"\s*GiB")
_KV_TOKENS = re.compile(r"\b(GPU|CPU) KV cache size:\s*" + _NUMBER + r"\s*tokens")
_BLOCKS = re.compile(r"# GPU blocks:\s*" + _NUMBER)
_CONCURRENCY = re.compile(
    r"Maximum concurrency for\s+" + _NUMBER + r"\s+tokens per request:\s*" + _NUMBER + r"x"
)
# SGLang (GB there is GiB: its get_available_gpu_memory divides by 1 << 30).
_SG_WEIGHTS = re.compile(r"Load weight end\..*?\bmem usage=" + _NUMBER + r"\s*GB")
_SG_KV = re.compile(
    r"KV Cache is allocated\.\s*#tokens:\s*"
    + _NUMBER
    + r"(?:,\s*K size:\s*"
    + _NUMBER
    + r"\s*GB,\s*V size:\s*"
    + _NUMBER
    + r"\s*GB|,\s*KV size:\s*"
    + _NUMBER
    + r"\s*GB)?"
)
_SG_TOTAL = re.compile(r"\bmax_total_num_tokens=" + _NUMBER)
# llama.cpp (the prefix names the function: llama_kv_cache_init, llama_kv_cache, load_tensors).
_LC_MODEL_BUF = re.compile(
    r"\b(CUDA\d+|ROCm\d+|Metal|Vulkan\d+)(?: model)? buffer size\s*=\s*" + _NUMBER + r"\s*MiB"
)
_LC_KV_BUF = re.compile(
    r"\b(CUDA\d+|ROCm\d+|Metal|Vulkan\d+) KV buffer size\s*=\s*" + _NUMBER + r"\s*MiB"
)
_LC_KV_SIZE = re.compile(
    r"llama_kv_cache(?:_unified)?:\s*size\s*=\s*"
    + _NUMBER
    + r"\s*MiB\s*\(\s*"
    + _NUMBER
    + r"\s*cells"
)
_LC_KV_CELLS = re.compile(r"llama_kv_cache_init:\s*kv_size\s*=\s*" + _NUMBER)


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def parse_engine_log(text: str) -> EngineAllocation:
    """The allocation figures in a vLLM, SGLang or llama.cpp start-up log (the last value of
    each wins, as a restart appends a new start to the same log).

    >>> log = '''[gpu_model_runner.py:4959] Model loading took 7.75 GiB memory and 3.15 seconds
    ... [gpu_worker.py:436] Available KV cache memory: 18.16 GiB
    ... [kv_cache_utils.py:1319] GPU KV cache size: 307,184 tokens
    ... [kv_cache_utils.py:1323] Maximum concurrency for 8,192 tokens per request: 37.50x'''
    >>> a = parse_engine_log(log)
    >>> a.weights_gib, a.kv_cache_gib, a.kv_cache_tokens, a.kv_device
    (7.75, 18.16, 307184, 'GPU')
    >>> a.max_concurrency, a.concurrency_tokens, len(a.lines)
    (37.5, 8192, 4)
    >>> parse_engine_log("nothing here") == EngineAllocation()
    True
    """
    weights: list[float] = []
    kv_gib = conc = None
    kv_tokens = device = conc_tokens = blocks = None
    kv_buffers: dict[str, float] = {}
    lines: list[str] = []
    for line in text.splitlines():
        hit = False
        for match in _WEIGHTS.finditer(line):
            weights.append(_num(match.group(1) or match.group(2)))
            hit = True
        if found := _SG_WEIGHTS.search(line):
            weights.append(_num(found.group(1)))
            hit = True
        if found := _AVAILABLE.search(line) or _PROFILE_KV.search(line):
            kv_gib, hit = _num(found.group(1)), True
        if found := _KV_TOKENS.search(line):
            device, kv_tokens, hit = found.group(1), int(_num(found.group(2))), True
        if found := _BLOCKS.search(line):
            blocks, device, hit = int(_num(found.group(1))), "GPU", True
        if found := _CONCURRENCY.search(line):
            conc_tokens, conc, hit = int(_num(found.group(1))), _num(found.group(2)), True
        if found := _SG_KV.search(line):
            kv_tokens, device, hit = int(_num(found.group(1))), "GPU", True
            if found.group(2):
                kv_gib = _num(found.group(2)) + _num(found.group(3))
            elif found.group(4):
                kv_gib = _num(found.group(4))
        elif found := _SG_TOTAL.search(line):
            kv_tokens, device, hit = int(_num(found.group(1))), "GPU", True
        if found := _LC_KV_BUF.search(line):
            kv_buffers[found.group(1)] = _num(found.group(2))
            device, hit = "GPU", True
        elif found := _LC_MODEL_BUF.search(line):
            weights.append(_num(found.group(2)) / 1024)
            hit = True
        if found := _LC_KV_SIZE.search(line):
            kv_tokens, hit = int(_num(found.group(2))), True
            if not kv_buffers:
                kv_gib = _num(found.group(1)) / 1024
        elif found := _LC_KV_CELLS.search(line):
            kv_tokens, hit = int(_num(found.group(1))), True
        if hit:
            lines.append(line.strip())
    if kv_buffers:  # llama.cpp: per device; the largest is what one card must hold
        kv_gib = max(kv_buffers.values()) / 1024
    return EngineAllocation(
        weights_gib=max(weights) if weights else None,
        kv_cache_gib=round(kv_gib, 4) if kv_gib is not None else None,
        kv_cache_tokens=kv_tokens,
        kv_device=device,
        max_concurrency=conc,
        concurrency_tokens=conc_tokens,
        kv_cache_blocks=blocks,
        lines=tuple(lines),
    )


# ---- the setup a log states ---------------------------------------------------------------

_ENGINE_MARKS = (
    ("sglang", re.compile(r"sglang|Load weight (?:begin|end)|KV Cache is allocated|ServerArgs\(")),
    (
        "llama.cpp",
        re.compile(
            r"\bllama_(?:model|kv_cache|context|init|new_context)|load_tensors:|"
            r"ggml_cuda_init|llm_load_tensors|llama-server"
        ),
    ),
    (
        "vllm",
        re.compile(
            r"vllm|gpu_model_runner|kv_cache_utils|LLM engine|# GPU blocks|"
            r"Model loading took|Loading model weights took"
        ),
    ),
)
_VLLM_VERSION = re.compile(r"LLM engine \(v([0-9][^)\s]*)\)|API server version\s+([0-9]\S*)")
_LC_VERSION = re.compile(r"\bbuild:?\s*=?\s*([0-9]+)\s*\(([0-9a-f]+)\)")
# key=value (vLLM's engine config, SGLang's ServerArgs) and 'key': value (vLLM non-default args)
_PAIR = re.compile(
    r"""(?<![\w'"])(\w+)=('[^']*'|"[^"]*"|[^,\s)]+)|'(\w+)':\s*('[^']*'|"[^"]*"|[^,}\s]+)"""
)
_LC_FIELD = re.compile(r"\b(n_ctx|n_seq_max|n_ubatch|n_batch)\s*=\s*" + _WHOLE)
_LC_TYPE_K = re.compile(r"type_k\s*=\s*'(\w+)'|\bK \((\w+)\):")
_LC_MODEL = re.compile(r"general\.name\s+(?:str\s+)?=\s*(.+?)\s*$|loaded meta data .* from (\S+)")
_MAX_LEN = re.compile(r"Using max model len\s+" + _WHOLE)
_CHUNK = re.compile(r"max_num_batched_tokens=" + _WHOLE)
_TOTAL_MEM = re.compile(r"total_gpu_memory=" + _NUMBER + r"\s*GiB")
_UTIL = re.compile(r"gpu_memory_utilization=([0-9]+(?:\.[0-9]+)?)")
_RANK = re.compile(r"\b(?:rank=|TP ?)([0-9]{1,4})\b")
_COMMAND = re.compile(
    r"(?:vllm serve|vllm\.entrypoints\.openai\.api_server|sglang\.launch_server|"
    r"llama-server)\s+(.*)$"
)

# option or config key -> LogSetup field, for every engine's spelling
_KEYS = {
    "model": "model",
    "model_path": "model",
    "model_tag": "model",
    "m": "model",
    "dtype": "dtype",
    "quantization": "quantization",
    "tensor_parallel_size": "tensor_parallel",
    "tp_size": "tensor_parallel",
    "tp": "tensor_parallel",
    "max_model_len": "max_model_len",
    "max_seq_len": "max_model_len",
    "context_length": "max_model_len",
    "ctx_size": "max_model_len",
    "c": "max_model_len",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "mem_fraction_static": "gpu_memory_utilization",
    "kv_cache_dtype": "kv_cache_dtype",
    "cache_type_k": "kv_cache_dtype",
    "max_num_seqs": "max_num_seqs",
    "max_running_requests": "max_num_seqs",
    "parallel": "max_num_seqs",
    "np": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "ubatch_size": "max_num_batched_tokens",
    "ub": "max_num_batched_tokens",
    "enforce_eager": "enforce_eager",
    "block_size": "block_size",
}
_INTS = {"tensor_parallel", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size"}


def _value(field: str, raw: str) -> Any:
    """A config value in its type, or None (``None``, ``auto``, an unparsable number)."""
    text = raw.strip("'\"")
    if text in ("None", "null", "") or (field != "model" and text == "auto"):
        return None
    if field in _INTS:
        ok = text.isascii() and text.isdigit() and len(text) <= 18  # int() of 4,300+ digits raises
        return int(text) if ok else None
    if field == "gpu_memory_utilization":
        try:
            return float(text)
        except ValueError:
            return None
    if field == "enforce_eager":
        return {"True": True, "true": True, "False": False, "false": False}.get(text, True)
    if field == "dtype":
        return text.removeprefix("torch.")
    return text


def _command_pairs(args: str) -> list[tuple[str, str]]:
    """``--tp 4 --model X --enforce-eager`` -> pairs (the model may come first, positional)."""
    import shlex

    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    pairs: list[tuple[str, str]] = []
    if words and not words[0].startswith("-"):
        pairs.append(("model", words[0]))
    for i, word in enumerate(words):
        if not word.startswith("-"):
            continue
        key, eq, value = word.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            value = "True" if not nxt or nxt.startswith("-") else nxt
        pairs.append((key, value))
    return pairs


def parse_log_setup(text: str) -> LogSetup:
    """What a server log (or the command line pasted above it) says about the setup.

    >>> s = parse_log_setup("INFO llm_engine.py:237] Initializing an LLM engine (v0.6.4) with "
    ...     "config: model='meta-llama/Llama-3.1-8B-Instruct', dtype=torch.bfloat16, "
    ...     "max_seq_len=8192, tensor_parallel_size=2, kv_cache_dtype=auto")
    >>> s.engine, s.version, s.model, s.dtype, s.tensor_parallel, s.max_model_len, s.kv_cache_dtype
    ('vllm', '0.6.4', 'meta-llama/Llama-3.1-8B-Instruct', 'bfloat16', 2, 8192, None)
    """
    engine = None
    for name, mark in _ENGINE_MARKS:
        if mark.search(text):
            engine = name
            break
    found: dict[str, Any] = {}
    version = None

    def take(pairs: list[tuple[str, str]], overwrite: bool) -> None:
        for key, raw in pairs:
            field = _KEYS.get(key)
            if field is None or (field in found and not overwrite):
                continue
            value = _value(field, raw)
            if value is not None:
                found[field] = value

    ranks: set[int] = set()
    for line in text.splitlines():
        if "took" in line or "Load weight end" in line or "KV Cache is allocated" in line:
            ranks.update(int(r) for r in _RANK.findall(line))
        if match := _COMMAND.search(line):
            take(_command_pairs(match.group(1)), overwrite=False)
            if engine is None:
                engine = (
                    "sglang" if "sglang" in line else "llama.cpp" if "llama" in line else "vllm"
                )
            continue
        if match := _VLLM_VERSION.search(line):
            version = match.group(1) or match.group(2)
        if engine == "llama.cpp":
            if match := _LC_VERSION.search(line):
                version = f"b{match.group(1)}-{match.group(2)}"
            for key, value in _LC_FIELD.findall(line):
                if key == "n_ctx":
                    found["max_model_len"] = int(value)
                elif key == "n_seq_max":
                    found["max_num_seqs"] = int(value)
                elif key == "n_ubatch":
                    found["max_num_batched_tokens"] = int(value)
            if match := _LC_TYPE_K.search(line):
                found["kv_cache_dtype"] = match.group(1) or match.group(2)
            if (match := _LC_MODEL.search(line)) and "model" not in found:
                found["model"] = (match.group(1) or match.group(2)).strip()
            continue
        if (
            "with config:" in line
            or "non-default args" in line
            or "ServerArgs(" in line
            or "server_args" in line
        ):
            take([(m[0] or m[2], m[1] or m[3]) for m in _PAIR.findall(line)], overwrite=True)
        if match := _MAX_LEN.search(line):
            found["max_model_len"] = int(match.group(1))
        if (match := _CHUNK.search(line)) and "max_num_batched_tokens" not in found:
            found["max_num_batched_tokens"] = int(match.group(1))
        if match := _UTIL.search(line):
            found["gpu_memory_utilization"] = float(match.group(1))
        if match := _TOTAL_MEM.search(line):
            found["gpu_memory_gib"] = _num(match.group(1))
        if engine == "sglang" and (match := re.search(r"Load weight end\..*?dtype=([\w.]+)", line)):
            found.setdefault("dtype", match.group(1).removeprefix("torch."))
    if ranks:
        found["ranks_seen"] = max(ranks) + 1
    return LogSetup(engine=engine, version=version, **found)


def read_engine_log(text: str) -> EngineLog:
    """The setup and the allocation figures of one server log.

    Lines starting with ``# `` are comments (a note on where a pasted log came from), except
    vLLM's own ``# GPU blocks`` line.
    """
    kept = "\n".join(
        line for line in text.splitlines() if not line.startswith("# ") or _BLOCKS.search(line)
    )
    return EngineLog(parse_log_setup(kept), parse_engine_log(kept))


_INFO_LINE = re.compile(r"^vllm:cache_config_info\{(?P<labels>.*)\}\s+\S+\s*$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


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
