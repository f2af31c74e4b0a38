"""An engine's knobs checked, from keyword arguments (``requires_fit``, a log's setup) or from
the ``gpufit fit`` options; the options themselves come from the engines' ``knobs``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pytest_gpufit.engines.protocol import EngineKnobs, Knob, plain_flag
from pytest_gpufit.engines.registry import NAMES, all_engines, check_engine, engine
from pytest_gpufit.errors import GpufitError

_WHOLE_LIMITS = {
    "max_model_len": 10**9,
    "max_num_seqs": 10**6,
    "max_num_batched_tokens": 10**8,
}
FIELDS = tuple(f.name for f in dataclasses.fields(EngineKnobs) if f.name != "engine")


def _knob(name: str, field: str) -> Knob | None:
    return next((k for k in engine(name).knobs if k.field == field), None)


def _flag(name: str, field: str) -> str:
    knob = _knob(name, field)
    return knob.flag if knob else plain_flag(field)


def _whole(name: str, field: str, value: object) -> int:
    top = _WHOLE_LIMITS[field]
    expected = f"{_flag(name, field)} must be a whole number from 1 to {top:,}, got {value!r}"
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


def _fraction(name: str, value: object) -> float:
    flag = _flag(name, "gpu_memory_utilization")
    expected = f"{flag} must be a fraction of the card above 0 and at most 1, got {value!r}"
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


def _aliases() -> dict[str, str]:
    """Every engine's own option names -> the knob field they set (``ctx_size``...)."""
    return {key: k.field for e in all_engines() for k in e.knobs for key in k.keys}


def parse_knobs(engine_name: str, **raw: Any) -> EngineKnobs:
    """Checked knobs for ``engine_name``; ``None`` values are the engine's defaults.

    >>> parse_knobs("vllm", gpu_memory_utilization="0.95").gpu_memory_utilization
    0.95
    >>> parse_knobs("vllm", gpu_memory_utilization=1.5)
    Traceback (most recent call last):
    ...
    pytest_gpufit.errors.GpufitError: --gpu-memory-utilization must be a fraction of the card \
above 0 and at most 1, got 1.5
    """
    name = check_engine(engine_name)
    the_engine = engine(name)
    aliases = _aliases()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        field = aliases.get(key, key)
        if field not in FIELDS:
            raise GpufitError(f"unknown {name} knob {key!r}; accepted: {', '.join(sorted(FIELDS))}")
        if value is None or (field == "enforce_eager" and value is False):
            continue
        if _knob(name, field) is None:
            raise GpufitError(
                f"{plain_flag(field)} does not apply to {name}; its knobs: "
                f"{', '.join(k.flag for k in the_engine.knobs)}"
            )
        if field == "gpu_memory_utilization":
            values[field] = _fraction(name, value)
        elif field == "kv_cache_dtype":
            text = str(value).strip().lower()
            if text not in the_engine.kv_cache_types:
                raise GpufitError(
                    f"{_flag(name, field)} {value!r} is not a {name} KV cache type; "
                    f"accepted: {', '.join(the_engine.kv_cache_types)}"
                )
            values[field] = text
        elif field == "moe_backend":
            knob = _knob(name, field)
            text = str(value).strip().lower()
            if knob is None or text not in knob.choices:
                choices = ", ".join(knob.choices) if knob else ""
                raise GpufitError(
                    f"{_flag(name, field)} {value!r} is not a {name} MoE backend; accepted: "
                    f"{choices}"
                )
            values[field] = text
        elif field == "enforce_eager":
            if not isinstance(value, bool):
                raise GpufitError(f"{_flag(name, field)} is a flag (true/false), got {value!r}")
            values[field] = value
        else:
            values[field] = _whole(name, field, value)
    return EngineKnobs(name, **values)


# ---- the `gpufit fit --engine` options ------------------------------------------------------


def cli_options() -> dict[str, tuple[str, tuple[str, ...]]]:
    """``gpufit fit`` option -> (knob field, the engines it belongs to), from every engine's
    knobs: one option per engine spelling, so a llama.cpp flag given with --engine vllm is an
    error, not silently taken. The key is the long option (argparse's ``dest``)."""
    options: dict[str, tuple[str, tuple[str, ...]]] = {}
    for the_engine in all_engines():
        for knob in the_engine.knobs:
            if not knob.options:
                continue
            option = knob.options[-1]
            field, owners = options.get(option, (knob.field, ()))
            options[option] = (field, (*owners, the_engine.name))
    return options


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """``gpufit fit --engine`` and every engine's knobs as options, each with its engines."""
    group = parser.add_argument_group("serving engine (docs/fit.md, Engine profiles)")
    names = list(NAMES)
    group.add_argument(
        "--engine",
        help=f"{', '.join(names[:-1])} or {names[-1]}: what the engine allocates per GPU, "
        "whether it starts, its KV cache in tokens; --gpu N*CARD runs it over N GPUs",
    )
    seen: dict[str, list[tuple[str, Knob]]] = {}
    for the_engine in all_engines():
        for knob in the_engine.knobs:
            if knob.options:
                seen.setdefault(knob.options[-1], []).append((the_engine.name, knob))
    for owners in seen.values():
        _, first = owners[0]
        helps = list(dict.fromkeys(k.help for _, k in owners))
        if len(helps) == 1:
            text = f"{'/'.join(n for n, _ in owners)}: {helps[0]}"
        else:
            text = "; ".join(f"{n}: {k.help}" for n, k in owners)
        if first.field == "enforce_eager":
            group.add_argument(*first.options, action="store_true", help=text)
        else:
            metavar = "F" if first.field == "gpu_memory_utilization" else "N"
            metavar = "T" if first.field in ("kv_cache_dtype", "moe_backend") else metavar
            group.add_argument(*first.options, metavar=metavar, help=text)


def knobs_from_options(engine_name: str | None, options: dict[str, Any]) -> EngineKnobs | None:
    """Knobs from ``gpufit fit`` options (``{"--max-model-len": "8192", ...}``, None = not
    given); None without ``--engine``. An option of another engine, or one without
    ``--engine``, is an error naming it."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    if engine_name is None:
        if given:
            raise GpufitError(
                f"{', '.join(given)}: engine knobs need --engine ({', '.join(NAMES)})"
            )
        return None
    name = check_engine(engine_name)
    table = cli_options()
    raw: dict[str, Any] = {}
    for option, value in given.items():
        field, owners = table[option]
        if name not in owners:
            others = [o for o, (f, e) in table.items() if f == field and name in e]
            hint = f"; {name} spells it {others[0]}" if others else ""
            raise GpufitError(f"{option} is a {'/'.join(owners)} option, not {name}'s{hint}")
        if field in raw:
            raise GpufitError(f"{option}: given twice (as another spelling too)")
        raw[field] = value
    try:
        return parse_knobs(name, **raw)
    except GpufitError as error:
        raise GpufitError(f"--engine {name}: {error}") from None
