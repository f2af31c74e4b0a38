"""Checked reads of ``config.json`` fields: every value the estimator uses passes through here.

A wrong value (negative, zero where a size is meant, a string, a bool, NaN, or absurdly large)
is one ``GpufitError`` that names the file, the line, the field and what was expected: a
negative ``intermediate_size`` must never turn into a negative estimate that "fits".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.errors import GpufitError

# Sane upper bounds, each far above any published model (the largest known value in the
# comment); a value beyond one is a typo or an attack, not a model. Listed in docs/fit.md.
MAXIMA: dict[str, int] = {
    "vocab_size": 10**7,  # 262,208 (Gemma 3)
    "hidden_size": 10**6,  # 16,384 (Llama 3.1 405B)
    "num_hidden_layers": 10**4,  # 126 (Llama 3.1 405B)
    "num_attention_heads": 10**4,  # 128 (DeepSeek-V3, Llama 3.1 405B)
    "num_key_value_heads": 10**4,
    "head_dim": 10**5,  # 256 (Gemma)
    "intermediate_size": 10**7,  # 53,248 (Llama 3.1 405B)
    "moe_intermediate_size": 10**7,
    "shared_expert_intermediate_size": 10**7,
    "num_experts": 10**5,  # 512 (Qwen3-Next)
    "num_local_experts": 10**5,
    "n_routed_experts": 10**5,
    "num_experts_per_tok": 10**5,
    "experts_per_token": 10**5,
    "n_shared_experts": 10**4,
    "kv_lora_rank": 10**6,  # 512 (DeepSeek-V3)
    "q_lora_rank": 10**6,  # 1,536 (DeepSeek-V3)
    "qk_rope_head_dim": 10**5,
    "qk_nope_head_dim": 10**5,
    "v_head_dim": 10**5,
    "first_k_dense_replace": 10**4,
    "decoder_sparse_step": 10**4,
    "moe_layer_freq": 10**4,
    "num_nextn_predict_layers": 10**4,
    "max_position_embeddings": 10**9,  # 10,485,760 (Llama 4 Scout)
    "original_max_position_embeddings": 10**9,  # rope_scaling's trained length
    "sliding_window": 10**9,
    "sliding_window_pattern": 10**4,
    "bits": 64,
    "w_bit": 64,
    "num_bits": 64,  # compressed-tensors config_groups.*.weights
    "group_size": 10**6,
    "q_group_size": 10**6,
    "weight_block_size": 10**6,
}

_ABSENT: Any = object()


@dataclass(frozen=True)
class ConfigFields:
    """One JSON object of a config file, read field by field with checks.

    ``source`` is the file named in errors, ``text`` its contents (to find the line of a field),
    ``prefix`` the path of this object inside the file (``text_config.``).

    >>> ConfigFields({"hidden_size": -1}, "config.json").whole("hidden_size")
    Traceback (most recent call last):
    ...
    pytest_gpufit.errors.GpufitError: config.json: field 'hidden_size' must be a whole number \
from 1 to 1,000,000; got -1
    """

    data: Mapping[str, Any]
    source: str
    text: str | None = None
    prefix: str = ""

    def error(self, key: str, expected: str, got: Any = _ABSENT) -> GpufitError:
        """``config.json:12: field 'head_dim' must be ...; got 'sixteen'``."""
        line = self._line(key)
        where = f"{self.source}:{line}" if line else self.source
        shown = "" if got is _ABSENT else f"; got {_show(got)}"
        return GpufitError(f"{where}: field {self.prefix + key!r} {expected}{shown}")

    def _line(self, key: str) -> int | None:
        if not self.text:
            return None
        start = 0
        for part in self.prefix.split(".")[:-1]:  # inside text_config, find its own key
            found = re.search(rf'"{re.escape(part)}"\s*:', self.text[start:])
            start += found.end() if found else 0
        found = re.search(rf'"{re.escape(key)}"\s*:', self.text[start:])
        return self.text.count("\n", 0, start + found.start()) + 1 if found else None

    def whole(self, key: str, minimum: int = 1) -> int | None:
        """A whole number in ``[minimum, MAXIMA[key]]``; None when absent or null."""
        value = self.data.get(key)
        return None if value is None else self._whole(key, value, minimum)

    def required(self, key: str, minimum: int = 1) -> int:
        value = self.data.get(key)
        if value is None:
            raise self.error(key, f"is required: a whole number from {minimum:,}")
        return self._whole(key, value, minimum)

    def _whole(self, key: str, value: Any, minimum: int) -> int:
        maximum = MAXIMA[key]
        expected = f"must be a whole number from {minimum:,} to {maximum:,}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, expected, value)
        if isinstance(value, float) and not value.is_integer():  # NaN, inf, 2.5
            raise self.error(key, expected, value)
        number = int(value)  # an integral float such as 4096.0 is accepted
        if not minimum <= number <= maximum:
            raise self.error(key, expected, value)
        return number

    def flag(self, key: str, default: bool) -> bool:
        """A JSON true/false; ``"false"`` as a string would read as true, so it is refused."""
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false", value)
        return value

    def string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self.error(key, "must be a string", value)
        return value

    def strings(self, key: str) -> list[str] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings", value)
        return value

    def wholes(self, key: str, minimum: int, maximum: int) -> list[int]:
        """A list of whole numbers in ``[minimum, maximum]`` (layer indices); [] when absent."""
        value = self.data.get(key)
        if value is None:
            return []
        expected = f"must be a list of whole numbers from {minimum:,} to {maximum:,}"
        if not isinstance(value, list):
            raise self.error(key, expected, value)
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise self.error(key, expected, item)
            if not minimum <= item <= maximum:
                raise self.error(key, expected, item)
        return value

    def nested(self, key: str) -> ConfigFields | None:
        """A JSON object inside this one (``text_config``, ``quantization_config``)."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, "must be a JSON object", value)
        return ConfigFields(value, self.source, self.text, f"{self.prefix}{key}.")


def _show(value: Any) -> str:
    """A value as the config file spells it (JSON), cut when long."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
