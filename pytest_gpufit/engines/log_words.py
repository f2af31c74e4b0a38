"""Reading an engine's log: the number forms and ``key=value`` pairs every engine's log uses.

The engine modules build their own patterns from these pieces; ``engines/logs.py`` runs them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

# Never ends on a comma; at most 32 characters before the point and 24 after, and no digit
# after it: a longer figure is no engine's (int() of 4,300+ digits raises, a float of it is
# inf), so the line is not recognised rather than read as a prefix of it.
NUMBER = r"([0-9](?:[0-9,]{0,30}[0-9])?(?:\.[0-9]{1,24})?)(?![0-9])"
WHOLE = r"([0-9]{1,18})(?![0-9])"  # a setup's whole number, same reason
# key=value (vLLM's engine config, SGLang's ServerArgs) and 'key': value (vLLM non-default args)
PAIR = re.compile(
    r"""(?<![\w'"])(\w+)=('[^']*'|"[^"]*"|[^,\s)]+)|'(\w+)':\s*('[^']*'|"[^"]*"|[^,}\s]+)"""
)
RANK = re.compile(r"\b(?:rank=|TP ?)([0-9]{1,4})\b")
# Option and config names every engine spells alike -> LogSetup fields.
COMMON_KEYS = {"model": "model", "dtype": "dtype", "quantization": "quantization"}
_INTS = {"tensor_parallel", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size"}


def num(text: str) -> float:
    """A logged figure, thousands commas allowed.

    >>> num("307,184")
    307184.0
    """
    return float(text.replace(",", ""))


def setup_value(field: str, raw: str) -> Any:
    """A config value in its type, or None (``None``, ``auto``, an unparsable number).

    >>> setup_value("max_model_len", "'8192'"), setup_value("dtype", "torch.bfloat16")
    (8192, 'bfloat16')
    """
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


def command_pairs(args: str) -> list[tuple[str, str]]:
    """``--tp 4 --model X --enforce-eager`` -> pairs (the model may come first, positional).

    >>> command_pairs("Qwen/Qwen3-8B --tp 4 --enforce-eager")
    [('model', 'Qwen/Qwen3-8B'), ('tp', '4'), ('enforce_eager', 'True')]
    """
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


def config_pairs(line: str) -> list[tuple[str, str]]:
    """The ``key=value`` and ``'key': value`` pairs of one config line.

    >>> config_pairs("config: model='m', tensor_parallel_size=2")
    [('model', "'m'"), ('tensor_parallel_size', '2')]
    """
    return [(m[0] or m[2], m[1] or m[3]) for m in PAIR.findall(line)]


def take(
    found: dict[str, Any],
    pairs: Iterable[tuple[str, str]],
    keys: Mapping[str, str],
    overwrite: bool,
) -> None:
    """Set ``found``'s fields from the pairs whose key ``keys`` names (first or last wins)."""
    for key, raw in pairs:
        field = keys.get(key)
        if field is None or (field in found and not overwrite):
            continue
        value = setup_value(field, raw)
        if value is not None:
            found[field] = value
