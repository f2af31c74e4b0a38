"""Execution backends: load a model onto a device, generate, give logits, unload.

The protocol is small on purpose so that a vLLM backend can implement it too. A backend is a
module with ``load(...) -> Loaded``, ``OutOfMemory`` (the exception type a load raises when the
device is full), ``prompt_ids(loaded, text, batch, tokens, seed)``, ``kl_and_top1(reference,
test)`` and ``free_device(device)``; checks reach it only through ``load_backend``, so a
dependency that cannot be imported is one ``MissingExtra``, judged by the session's policy.
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
    """An optional dependency is missing or fails to import.

    The item skips or fails by the session's policy; ``cause`` is the import error's first
    line and ``extra`` the pip extra that provides the dependency.
    """

    def __init__(self, backend: str, needs: str, extra: str, error: BaseException) -> None:
        self.backend, self.extra = backend, extra
        self.cause = first_line(error)
        if isinstance(error, ModuleNotFoundError) and error.name:
            problem = f"{error.name} is missing: {self.cause}"
            fix = "install it"
        else:  # installed but broken: a CUDA library not found, an ABI mismatch
            problem = f"importing them failed: {self.cause}"
            fix = "repair or reinstall it"
        super().__init__(
            f"the {backend} backend needs {needs} ({problem}); {fix}: "
            f"pip install 'pytest-gpufit[{extra}]'"
        )


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``, for one-line reasons.

    >>> first_line(ImportError("libcudnn.so.9: cannot open shared object file\\nmore"))
    'ImportError: libcudnn.so.9: cannot open shared object file'
    """
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text.splitlines()[0]}" if text else name


# What each backend can measure. A check that needs more is a collection error (see ``needs``).
CAPABILITIES: dict[str, frozenset[str]] = {
    "transformers": frozenset(
        {"load", "peak_memory", "generate", "token_ids", "throughput", "batch"}
        | {"fp32_logits", "golden"}
    ),
    "openai": frozenset({"serve", "generate", "throughput", "load_levels", "golden"}),
}
# capability -> what it is, for the collection error
CAPABILITY_TEXT = {
    "serve": "a server to ask (serves and load talk HTTP to an OpenAI-compatible endpoint)",
    "load_levels": "a server to put under load",
    "load": "loading the model in the test process (an HTTP server is loaded by its engine)",
    "peak_memory": "the peak memory a load allocated (a server does not report it per request)",
    "generate": "generation",
    "token_ids": "token ids (an HTTP server answers with text; use expect_contains)",
    "throughput": "timed generation",
    "batch": "batched generation in one call (a server batches concurrent requests: use load)",
    "fp32_logits": "full fp32 logits beside the served dtype (an HTTP server gives at most "
    "top-k logprobs; use reference: golden)",
    "golden": "top-k log-probabilities",
}


def needs(kind: str, params: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(field or None for the whole check, capability) pairs a check needs from its backend.

    >>> needs("precision", {"reference": "fp32", "max_kl": 0.1})
    [('reference', 'fp32_logits')]
    >>> needs("loads", {"max_peak_memory": 10})
    [(None, 'load'), ('max_peak_memory', 'peak_memory')]
    """
    out: list[tuple[str | None, str]] = []
    whole = {
        "serves": "serve",
        "load": "load_levels",
        "loads": "load",
        "generates": "generate",
        "throughput": "throughput",
    }
    if kind in whole:
        out.append((None, whole[kind]))
    if kind == "precision":
        golden = params.get("reference") == "golden"
        out.append((None, "golden") if golden else ("reference", "fp32_logits"))
    for key in ("max_peak_memory", "within_estimate"):
        if kind == "loads" and key in params:
            out.append((key, "peak_memory"))
    if kind == "generates" and "expect_tokens" in params:
        out.append(("expect_tokens", "token_ids"))
    if kind == "throughput" and params.get("batch", 1) != 1:
        out.append(("batch", "batch"))
    return out


def unsupported(backend: str, kind: str, params: dict[str, Any]) -> tuple[str | None, str] | None:
    """The first (field, message) a ``backend`` cannot measure for this check, or None."""
    have = CAPABILITIES.get(backend, frozenset())
    for key, capability in needs(kind, params):
        if capability not in have:
            return key, (
                f"the {backend} backend cannot measure this: it needs {CAPABILITY_TEXT[capability]}"
            )
    return None


def load_backend(name: str) -> Any:
    """The backend module for a suite's ``backend:`` value."""
    if name == "transformers":
        try:
            from pytest_gpufit.backends import transformers_backend  # late: imports torch
        # Any error importing the stack means a broken extra: ImportError for a missing CUDA
        # library, OSError from ctypes, AttributeError when torch and transformers mismatch.
        except Exception as error:
            raise MissingExtra(name, "torch and transformers", "hf", error) from None
        return transformers_backend
    if name == "openai":
        try:
            from pytest_gpufit.backends import openai_backend  # late: imports httpx
        except Exception as error:
            raise MissingExtra(name, "aiohttp and httpx", "endpoint", error) from None
        return openai_backend
    raise GpufitError(f"unknown backend {name!r}; available: transformers, openai")
