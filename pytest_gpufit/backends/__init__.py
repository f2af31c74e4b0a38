"""Execution backends: load a model onto a device, generate, give logits, unload.

The protocol is small on purpose so that a vLLM backend can implement it too.
"""

from __future__ import annotations

from typing import Any, Protocol

from pytest_gpufit.errors import GpufitError


class Loaded(Protocol):
    """A model on a device, with what loading it measured."""

    device: Any
    dtype: str
    load_seconds: float
    peak_allocated_bytes: int | None
    wrong_dtype_parameters: tuple[str, ...]

    def generate(self, input_ids: Any, new_tokens: int) -> tuple[Any, float, float]:
        """Greedy decode exactly ``new_tokens`` (no early stop): (token ids, TTFT s, decode s)."""
        ...

    def logits(self, input_ids: Any) -> Any:
        """Logits at every position, as fp32."""
        ...

    def greedy_topk(self, input_ids: Any, new_tokens: int, k: int) -> dict[str, Any]:
        """Greedy tokens with each step's top-k ids and log-probabilities (golden checks)."""
        ...

    def free_bytes(self) -> int | None:
        """Free device memory now; None where it cannot be known (the CPU)."""
        ...

    def reference_fp32(self) -> Loaded:
        """The same weights upcast to fp32, on the same device."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def unload(self) -> None: ...


class MissingExtra(Exception):
    """An optional dependency is not installed; the item skips, naming the extra."""


def load_backend(name: str) -> Any:
    """The backend module for a suite's ``backend:`` value."""
    if name == "transformers":
        try:
            from pytest_gpufit.backends import transformers_backend  # late: imports torch
        except ImportError as error:
            raise MissingExtra(
                f"the transformers backend needs torch and transformers "
                f"({error.name} is missing): pip install 'pytest-gpufit[hf]'"
            ) from None
        return transformers_backend
    raise GpufitError(f"unknown backend {name!r}; available: transformers")
