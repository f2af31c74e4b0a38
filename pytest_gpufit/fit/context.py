"""A context beyond the model's maximum is an error, everywhere a context is asked for.

Why an error and not a warning: positions beyond ``max_position_embeddings`` are outside what
the model was trained (or its RoPE scaling configured) for, and vLLM refuses such a
``--max-model-len`` unless ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1`` is set. A memory verdict for a
context the engine will not start with would be a green nobody earned.
"""

from __future__ import annotations

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.spec import ModelSpec


def check_context(spec: ModelSpec, context: int | None, what: str = "--context") -> None:
    """Raise when ``context`` exceeds the model's maximum (None: the model's default).

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> check_context(load_spec("qwen3-0.6b"), 65536)
    Traceback (most recent call last):
    ...
    pytest_gpufit.errors.GpufitError: --context 65,536 is beyond Qwen3-0.6B's maximum of \
40,960 tokens (max_position_embeddings in its config.json); ask for at most 40,960
    """
    top = spec.max_position_embeddings
    if context is not None and top and context > top:
        raise GpufitError(
            f"{what} {context:,} is beyond {spec.name}'s maximum of {top:,} tokens "
            f"(max_position_embeddings in its config.json); ask for at most {top:,}"
        )
