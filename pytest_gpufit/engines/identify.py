"""Which engine a running server is: from what it answers, what its ``/v1/models`` says owns
the model, or the command gpufit launched it with.

The answers are the server's claims; the launch command is what gpufit itself ran.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_gpufit.engines.logs import by_specificity
from pytest_gpufit.engines.records import EngineFacts
from pytest_gpufit.engines.registry import find_engine


def engine_probes() -> tuple[str, ...]:
    """The GET paths to ask, in order: the specific engines' before the generic one's.

    >>> probes = engine_probes()
    >>> probes[:2], probes[-1]
    (('/get_server_info', '/props'), '/version')
    """
    return tuple(dict.fromkeys(path for e in by_specificity() for path in e.probes))


def engine_from(answers: Mapping[str, Any], owners: Sequence[str] = ()) -> EngineFacts:
    """Name the engine from its probe answers (path -> JSON or None) and ``owned_by`` fields;
    an owner counts only when it names an engine (``transformers serve`` says ``local`` or the
    model's organisation).

    >>> engine_from({"/version": {"version": "0.32.0"}})
    EngineFacts(engine='vllm', version='0.32.0', source='/version')
    >>> engine_from({"/get_server_info": {"version": "0.5.4", "tp_size": 1}, "/version": None})
    EngineFacts(engine='sglang', version='0.5.4', source='/get_server_info')
    >>> engine_from({"/props": {"build_info": "b6100-abc", "total_slots": 4}})
    EngineFacts(engine='llama.cpp', version='b6100-abc', source='/props')
    >>> engine_from({}, owners=("transformers",))
    EngineFacts(engine='transformers', version=None, source='/v1/models owned_by')
    >>> engine_from({}, owners=("local",))
    EngineFacts(engine=None, version=None, source=None)
    """
    for candidate in by_specificity():
        facts = candidate.identify(answers)
        if facts is not None:
            return facts
    for owner in owners:
        named = find_engine(owner) if owner else None
        if named is not None:
            return EngineFacts(named.name, None, "/v1/models owned_by")
    return EngineFacts(None, None, None)


def engine_from_command(command: Sequence[str]) -> EngineFacts:
    """The engine a launch command runs (what gpufit itself started), or no engine.

    >>> engine_from_command(["python", "-m", "transformers.cli.transformers", "serve", "m"])
    EngineFacts(engine='transformers', version=None, source='launch command')
    >>> engine_from_command(["vllm", "serve", "Qwen/Qwen3-8B", "--port", "8000"]).engine
    'vllm'
    >>> engine_from_command(["python", "server.py"]).engine is None
    True
    """
    line = shlex.join(command) + " "
    for candidate in by_specificity():
        if candidate.command_marks.search(line):
            return EngineFacts(candidate.name, None, "launch command")
    return EngineFacts(None, None, None)
