"""A context beyond the model's maximum is an error, everywhere a context is asked for; rope
scaling (YaRN...) given the way the engines take it moves that maximum.

Why an error and not a warning: positions beyond ``max_position_embeddings`` are outside what
the model was trained (or its RoPE scaling configured) for, and vLLM refuses such a
``--max-model-len`` unless ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1`` is set. A memory verdict for a
context the engine will not start with would be a green nobody earned.

With rope scaling (vLLM ``--hf-overrides '{"rope_scaling": {...}}'``, formerly
``--rope-scaling``; SGLang ``--json-model-override-args``; or the block written into
config.json), the maximum is the one vLLM derives (``_get_and_verify_max_len``): for YaRN
``original_max_position_embeddings x factor``, for the other types the configured maximum
times ``factor``; ``llama3``, ``su`` and ``longrope`` leave it as configured.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.config_fields import MAXIMA
from pytest_gpufit.fit.spec import ModelSpec, rope_maximum

# The --hf-overrides keys that hold the block, and those that change neither the memory nor the
# maximum context (the rotary base).
_BLOCK_KEYS = ("rope_scaling", "rope_parameters")
_INERT_OVERRIDES = ("rope_theta",)
# The longest context any length here may reach: config.json's own bound for the field.
_MAX_LENGTH = MAXIMA["max_position_embeddings"]


@dataclass(frozen=True)
class RopeScaling:
    """A ``rope_scaling`` block: its type, factor and the trained length it scales."""

    rope_type: str
    factor: float
    original_max_position_embeddings: int | None = None

    def to_json(self) -> str:
        """The block as vLLM's ``--hf-overrides`` takes it.

        >>> RopeScaling("yarn", 4.0, 32768).to_json()[:48]
        '{"rope_scaling": {"rope_type": "yarn", "factor":'
        """
        block: dict[str, Any] = {"rope_type": self.rope_type, "factor": self.factor}
        if self.original_max_position_embeddings is not None:
            block["original_max_position_embeddings"] = self.original_max_position_embeddings
        return json.dumps({"rope_scaling": block})


@dataclass(frozen=True)
class LongContext:
    """A context extension a model's card documents: the block, the length it reaches, and
    what the card says of its quality."""

    rope: RopeScaling
    context: int
    note: str
    source: str


# What the shipped models' cards document. Qwen3 (4B and larger): "natively 32,768 tokens,
# 131,072 with YaRN"; the note is the card's own caution.
_QWEN3_YARN = LongContext(
    RopeScaling("yarn", 4.0, 32768),
    131072,
    "the Qwen3 model card: static YaRN keeps the factor 'constant regardless of input length, "
    "potentially impacting performance on shorter texts'; it does not recommend enabling it "
    "when the average context does not exceed 32,768 tokens",
    "https://huggingface.co/Qwen/Qwen3-30B-A3B (Processing Long Texts)",
)
DOCUMENTED: dict[str, LongContext] = {"Qwen3-30B-A3B": _QWEN3_YARN, "Qwen3-32B": _QWEN3_YARN}


def parse_rope_scaling(value: object, where: str = "--rope-scaling") -> RopeScaling:
    """A rope-scaling block from what users write: ``yarn:4`` or ``yarn:4:32768``, the JSON
    block, or vLLM's ``--hf-overrides`` JSON around it; ``type`` is read as ``rope_type``.

    >>> parse_rope_scaling("yarn:4:32768")
    RopeScaling(rope_type='yarn', factor=4.0, original_max_position_embeddings=32768)
    >>> parse_rope_scaling('{"rope_scaling": {"type": "dynamic", "factor": 2}}').factor
    2.0
    >>> parse_rope_scaling("yarn:0")
    Traceback (most recent call last):
    ...
    pytest_gpufit.errors.GpufitError: --rope-scaling: factor must be a number above 1, got 0.0
    """
    block: Any = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                block = json.loads(text)
            except json.JSONDecodeError as error:
                raise GpufitError(f"{where}: not JSON ({error.msg}): {text[:80]!r}") from None
        else:
            parts = text.split(":")
            if len(parts) not in (2, 3) or not parts[0]:
                raise GpufitError(
                    f"{where}: expected TYPE:FACTOR[:ORIGINAL] (yarn:4:32768) or the JSON "
                    f"block, got {text[:80]!r}"
                )
            block = {"rope_type": parts[0], "factor": parts[1]}
            if len(parts) == 3:
                block["original_max_position_embeddings"] = parts[2]
    # The --hf-overrides form; transformers 5 names the block rope_parameters.
    key = next((k for k in _BLOCK_KEYS if isinstance(block, dict) and k in block), None)
    if key is not None and isinstance(block[key], dict):
        others = sorted(str(k) for k in block if k not in (key, *_INERT_OVERRIDES))
        if others:  # vLLM applies them all; dropping one would plan another model
            raise GpufitError(
                f"{where}: only {key} is modelled; the other overrides "
                f"({', '.join(others)}) would change the model: leave them out or write them "
                "into a copy of its config.json"
            )
        block = block[key]
    if not isinstance(block, dict):
        raise GpufitError(f"{where}: expected a rope_scaling object, got {value!r:.80}")
    rope_type = block.get("rope_type", block.get("type"))
    if not isinstance(rope_type, str) or not rope_type.strip():
        raise GpufitError(f"{where}: rope_type (or type) is missing, e.g. yarn")
    factor = _number(block.get("factor", 1.0), where, "factor")
    if not factor > 1:
        raise GpufitError(f"{where}: factor must be a number above 1, got {factor}")
    original = block.get("original_max_position_embeddings")
    if original is not None:
        original = _whole(original, where)
    rope_type = rope_type.strip().lower()
    if rope_type == "yarn" and original is None:
        raise GpufitError(
            f"{where}: yarn needs original_max_position_embeddings (the trained length, "
            "32768 for Qwen3): yarn:4:32768"
        )
    return RopeScaling(rope_type, factor, original)


def _number(value: object, where: str, name: str) -> float:
    try:
        number = float(value) if isinstance(value, (int, float, str)) else math.nan
    except ValueError:
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise GpufitError(f"{where}: {name} must be a number, got {value!r:.40}")
    return number


def _whole(value: object, where: str) -> int:
    text = str(value).strip()
    ok = not isinstance(value, bool) and text.isascii() and text.isdigit() and len(text) <= 10
    if not ok or not 1 <= int(text) <= _MAX_LENGTH:  # 0 would read as "not given"
        raise GpufitError(
            f"{where}: original_max_position_embeddings must be a whole number from 1 to "
            f"{_MAX_LENGTH:,}, got {value!r:.40}"
        )
    return int(text)


def scaled_maximum(spec: ModelSpec, rope: RopeScaling) -> int:
    """The maximum context vLLM derives for ``spec`` with ``rope`` (its
    ``_get_and_verify_max_len``).

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> scaled_maximum(load_spec("qwen3-30b-a3b"), RopeScaling("yarn", 4.0, 32768))
    131072
    """
    # The block replaces the config's own rope_scaling: its maximum is the config's.
    top = spec.configured_max_position_embeddings or spec.max_position_embeddings or 2048
    original = rope.original_max_position_embeddings
    scaled = rope_maximum(top, rope.rope_type, rope.factor, original, spec.model_type)
    if not scaled <= _MAX_LENGTH:  # a finite factor can still overflow: 1e308 x 32768
        raise GpufitError(
            f"--rope-scaling: {rope.rope_type} x{rope.factor:g} gives a maximum beyond "
            f"{_MAX_LENGTH:,} tokens; no model is trained for that"
        )
    return int(scaled)


def with_rope_scaling(spec: ModelSpec, rope: RopeScaling | None) -> ModelSpec:
    """``spec`` as the engine sees it with ``rope`` set: its maximum context is the scaled one
    (the rotary cos/sin cache the engines keep grows with it). None leaves it as it is."""
    if rope is None:
        return spec
    top = scaled_maximum(spec, rope)
    note = f"rope scaling {rope.rope_type} x{rope.factor:g}: maximum context {top:,} tokens"
    documented = DOCUMENTED.get(spec.name)
    if documented is not None:
        note += f"; {documented.note} ({documented.source})"
    configured = spec.configured_max_position_embeddings or spec.max_position_embeddings
    return dataclasses.replace(
        spec,
        max_position_embeddings=top,
        configured_max_position_embeddings=configured,
        warnings=(*spec.warnings, note),
    )


def check_context(spec: ModelSpec, context: int | None, what: str = "--context") -> None:
    """Raise when ``context`` exceeds the model's maximum (None: the model's default); where
    the model's card documents a rope scaling that reaches it, the message gives it.

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> check_context(load_spec("qwen3-0.6b"), 65536)
    Traceback (most recent call last):
    ...
    pytest_gpufit.errors.GpufitError: --context 65,536 is beyond Qwen3-0.6B's maximum of \
40,960 tokens (max_position_embeddings in its config.json); ask for at most 40,960
    """
    top = spec.max_position_embeddings
    if context is not None and top and context > top:
        hint = ""
        documented = DOCUMENTED.get(spec.name)
        if documented is not None and context <= documented.context:
            rope = documented.rope
            # gpufit's commands take --rope-scaling; requires_fit and a suite's target read the
            # block from the model's config.json.
            how = (
                f"--rope-scaling {rope.rope_type}:{rope.factor:g}:"
                f"{rope.original_max_position_embeddings}"
                if what.startswith("--")
                else f"{rope.to_json()[1:-1]} in a copy of its config.json, given as the model"
            )
            hint = (
                f", or extend it with rope scaling as its model card documents "
                f"({documented.context:,} tokens): {how} (vLLM: --hf-overrides "
                f"'{rope.to_json()}')"
            )
        configured = spec.configured_max_position_embeddings
        source = (
            "max_position_embeddings in its config.json"
            if configured is None
            else f"max_position_embeddings {configured:,} with its rope scaling"
        )
        raise GpufitError(
            f"{what} {context:,} is beyond {spec.name}'s maximum of {top:,} tokens "
            f"({source}); ask for at most {top:,}{hint}"
        )
