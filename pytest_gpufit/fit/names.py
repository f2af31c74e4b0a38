"""Names users type for a model that the shipped configs answer: instruct and chat variants.

A post-trained variant shares its base model's config when every shape is the same (hidden size,
layers, heads, KV heads, vocabulary, experts, maximum context); only then is it listed here,
with what was compared. A variant whose shapes differ is not mapped: guessing would give a wrong
memory figure with a confident face.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """``name`` resolves to the shipped ``base`` config; ``why`` says what was compared."""

    name: str
    base: str
    why: str


# Compared field by field against the base config.json of the same release. Not listed, on
# purpose: Qwen/Qwen3-30B-A3B-Instruct-2507 (its model card gives a 262,144-token context, the
# shipped Qwen3-30B-A3B config 40,960: not the same config), Mixtral-8x22B-Instruct-v0.1 (not
# compared here), quantized repackagings (their
# quantization_config changes the weights: give the folder or config.json instead).
VARIANTS: tuple[Variant, ...] = (
    Variant(
        "meta-llama/Llama-3.1-8B-Instruct",
        "meta-llama/Llama-3.1-8B",
        "same shapes as the base: only eos_token_id differs",
    ),
    Variant(
        "meta-llama/Llama-3.1-70B-Instruct",
        "meta-llama/Llama-3.1-70B",
        "same shapes as the base: only eos_token_id differs",
    ),
    Variant(
        "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "meta-llama/Llama-3.1-8B",
        "the release's first name; same config as Llama-3.1-8B-Instruct",
    ),
    Variant(
        "meta-llama/Meta-Llama-3.1-70B-Instruct",
        "meta-llama/Llama-3.1-70B",
        "the release's first name; same config as Llama-3.1-70B-Instruct",
    ),
    Variant(
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "mistralai/Mixtral-8x7B-v0.1",
        "same shapes as the base (vocabulary 32,000, 32,768 positions)",
    ),
)
_BY_KEY = {v.name.lower(): v for v in VARIANTS}
_BY_KEY.update({v.name.lower().partition("/")[2]: v for v in VARIANTS})


def variant(model: str) -> Variant | None:
    """The variant entry for a typed name (with or without the organisation; any case).

    >>> variant("meta-llama/Llama-3.1-70B-Instruct").base
    'meta-llama/Llama-3.1-70B'
    >>> variant("llama-3.1-8b-instruct").base, variant("Qwen/Qwen3-30B-A3B-Instruct-2507")
    ('meta-llama/Llama-3.1-8B', None)
    """
    return _BY_KEY.get(model.strip().lower().removesuffix(".json"))


def variant_note(model: str) -> str | None:
    """``"meta-llama/Llama-3.1-70B-Instruct: the shipped meta-llama/Llama-3.1-70B config (...)"``
    when a name resolves through a variant, else None: what a command prints to say so."""
    found = variant(model)
    if found is None:
        return None
    return f"{model}: the shipped {found.base} config ({found.why})"
