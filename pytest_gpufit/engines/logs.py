"""An engine's start-up log read: which engine wrote it, the setup it states and what it says
it allocated. Each engine's module holds its own words (``read_allocation``,
``read_setup_line``); this module picks the engine and runs them.
"""

from __future__ import annotations

from typing import Any

from pytest_gpufit.engines import log_words
from pytest_gpufit.engines.protocol import Engine
from pytest_gpufit.engines.records import EngineAllocation, EngineLog, LogSetup
from pytest_gpufit.engines.registry import all_engines, engine


def by_specificity() -> list[Engine]:
    """The engines, those whose words others echo (``generic``) last."""
    return sorted(all_engines(), key=lambda e: e.generic)


def log_engine(text: str) -> Engine | None:
    """The engine whose marks the log holds (the specific ones asked first).

    >>> log_engine("[2025-07-01 TP0] Load weight end. mem usage=7.08 GB").name
    'sglang'
    >>> log_engine("hello") is None
    True
    """
    return next((e for e in by_specificity() if e.log_marks.search(text)), None)


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
    lines = text.splitlines()
    marked = log_engine(text)
    if marked is not None:
        found = marked.read_allocation(lines)
        if found.lines:
            return found
    # No engine's marks, or its words are not there: the engine whose words are.
    readings = [e.read_allocation(lines) for e in all_engines()]
    return max(readings, key=lambda a: len(a.lines))


def parse_log_setup(text: str) -> LogSetup:
    """What a server log (or the command line pasted above it) says about the setup.

    >>> s = parse_log_setup("INFO llm_engine.py:237] Initializing an LLM engine (v0.6.4) with "
    ...     "config: model='meta-llama/Llama-3.1-8B-Instruct', dtype=torch.bfloat16, "
    ...     "max_seq_len=8192, tensor_parallel_size=2, kv_cache_dtype=auto")
    >>> s.engine, s.version, s.model, s.dtype, s.tensor_parallel, s.max_model_len, s.kv_cache_dtype
    ('vllm', '0.6.4', 'meta-llama/Llama-3.1-8B-Instruct', 'bfloat16', 2, 8192, None)
    """
    marked = log_engine(text)
    name = marked.name if marked is not None else None
    found: dict[str, Any] = {}
    version = None
    ranks: set[int] = set()
    for line in text.splitlines():
        readers = [engine(name)] if name is not None else all_engines()
        if any(e.is_rank_line(line) for e in readers):
            ranks.update(int(r) for r in log_words.RANK.findall(line))
        launched = next(
            ((e, m) for e in all_engines() if (m := e.command_marks.search(line))), None
        )
        if launched is not None:
            by, match = launched
            log_words.take(found, log_words.command_pairs(match.group(1)), by.setup_keys, False)
            name = name or by.name
            continue
        for reader in readers:
            version = reader.read_setup_line(line, found) or version
    if ranks:
        found["ranks_seen"] = max(ranks) + 1
    return LogSetup(engine=name, version=version, **found)


def read_engine_log(text: str) -> EngineLog:
    """The setup and the allocation figures of one server log.

    Lines starting with ``# `` are comments (a note on where a pasted log came from), except
    an engine's own figure written that way (vLLM's ``# GPU blocks``).
    """
    kept = "\n".join(
        line
        for line in text.splitlines()
        if not line.startswith("# ") or any(e.read_allocation([line]).lines for e in all_engines())
    )
    return EngineLog(parse_log_setup(kept), parse_engine_log(kept))
