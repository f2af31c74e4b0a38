"""Engine facts for the serving client: which engine a server is, what its log says it
allocated, what its ``/metrics`` say. The engines own these words (``pytest_gpufit.engines``);
the names here stay for the serving code and suites that import them from here.
"""

from __future__ import annotations

from pytest_gpufit.engines.identify import engine_from, engine_from_command, engine_probes
from pytest_gpufit.engines.logs import parse_engine_log, parse_log_setup, read_engine_log
from pytest_gpufit.engines.records import EngineAllocation, EngineFacts, EngineLog, LogSetup
from pytest_gpufit.engines.vllm import kv_tokens_from_metrics, parse_cache_config_info

# Probed in this order: the SGLang and llama.cpp endpoints say more than vLLM's ``/version``.
ENGINE_PROBES = engine_probes()

__all__ = [
    "ENGINE_PROBES",
    "EngineAllocation",
    "EngineFacts",
    "EngineLog",
    "LogSetup",
    "engine_from",
    "engine_from_command",
    "kv_tokens_from_metrics",
    "parse_cache_config_info",
    "parse_engine_log",
    "parse_log_setup",
    "read_engine_log",
]
