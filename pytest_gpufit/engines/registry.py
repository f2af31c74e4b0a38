"""The serving engines gpufit knows, in one list, and the one way to get one by name.

``NAMES`` is read at import time (the ``requires_fit`` schema's enum, ``--help`` texts) and
costs nothing; ``engine(name)`` imports that engine's module (``engines/<name>.py``, a dot
spelled ``_``) on first use. Adding an engine: a module with an ``ENGINE`` that satisfies
``engines.protocol.Engine``, its name here, and its tests (docs/architecture.md, Engines).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import cast

from pytest_gpufit.engines.protocol import Engine
from pytest_gpufit.errors import GpufitError

# Registry order: how lists of engines read (help, errors, the schema's enum).
NAMES = ("vllm", "sglang", "llama.cpp", "transformers")
# The engine planned for when none is named (a log that does not say, `gpufit upgrade`): the
# calibrated one.
DEFAULT = "vllm"


@cache
def engine(name: str) -> Engine:
    """The engine registered as ``name`` (exactly; ``check_engine`` reads what users type).

    >>> engine("llama.cpp").split
    'layers split over'
    """
    if name not in NAMES:
        raise GpufitError(f"unknown engine {name!r}; accepted: {', '.join(NAMES)}")
    module = importlib.import_module(f"pytest_gpufit.engines.{name.replace('.', '_')}")
    return cast(Engine, module.ENGINE)


def all_engines() -> tuple[Engine, ...]:
    """Every registered engine, in registry order."""
    return tuple(engine(name) for name in NAMES)


def find_engine(text: str) -> Engine | None:
    """The engine a name or alias (``llamacpp``) means, case and spaces aside; None if none.

    >>> find_engine(" vLLM ").name, find_engine("tgi")
    ('vllm', None)
    """
    key = text.strip().lower()
    return next((e for e in all_engines() if key == e.name or key in e.aliases), None)


def check_engine(value: object, where: str = "--engine") -> str:
    """The registered name ``value`` means; anything else is one error naming ``where``.

    >>> check_engine("SGLang")
    'sglang'
    """
    found = find_engine(value) if isinstance(value, str) else None
    if found is None:
        raise GpufitError(f"{where}: unknown engine {value!r}; accepted: {', '.join(NAMES)}")
    return found.name
