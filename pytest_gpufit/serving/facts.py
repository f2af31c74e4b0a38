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

    ``weights_gib`` is the largest "Model loading took" figure (one line per tensor-parallel
    rank); ``kv_device`` is "GPU" or "CPU" as the log says.
    """

    weights_gib: float | None = None
    kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    kv_device: str | None = None
    max_concurrency: float | None = None
    concurrency_tokens: int | None = None
    lines: tuple[str, ...] = ()


_NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
_WEIGHTS = re.compile(
    r"(?:Model loading took|Loading model weights took)\s+" + _NUMBER + r"\s*GiB|"
    r"(?:Model loading took|Loading model weights took)\s+" + _NUMBER + r"\s*GB"
)
_AVAILABLE = re.compile(r"Available KV cache memory:\s*" + _NUMBER + r"\s*GiB")
_KV_TOKENS = re.compile(r"\b(GPU|CPU) KV cache size:\s*" + _NUMBER + r"\s*tokens")
_CONCURRENCY = re.compile(
    r"Maximum concurrency for\s+" + _NUMBER + r"\s+tokens per request:\s*" + _NUMBER + r"x"
)


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def parse_engine_log(text: str) -> EngineAllocation:
    """The allocation figures in a vLLM start-up log (the last value of each wins, as a restart
    appends a new start to the same log).

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
    kv_gib = kv_tokens = device = conc = conc_tokens = None
    lines: list[str] = []
    for line in text.splitlines():
        hit = False
        for match in _WEIGHTS.finditer(line):
            weights.append(_num(match.group(1) or match.group(2)))
            hit = True
        if found := _AVAILABLE.search(line):
            kv_gib, hit = _num(found.group(1)), True
        if found := _KV_TOKENS.search(line):
            device, kv_tokens, hit = found.group(1), int(_num(found.group(2))), True
        if found := _CONCURRENCY.search(line):
            conc_tokens, conc, hit = int(_num(found.group(1))), _num(found.group(2)), True
        if hit:
            lines.append(line.strip())
    return EngineAllocation(
        weights_gib=max(weights) if weights else None,
        kv_cache_gib=kv_gib,
        kv_cache_tokens=kv_tokens,
        kv_device=device,
        max_concurrency=conc,
        concurrency_tokens=conc_tokens,
        lines=tuple(lines),
    )


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
