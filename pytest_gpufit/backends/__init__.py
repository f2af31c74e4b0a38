"""Execution backends: load a model onto a device, generate, give logits, unload.

The protocol is small on purpose so that a vLLM backend can implement it too. A backend is a
module with ``load(...) -> Loaded``, ``OutOfMemory`` (the exception type a load raises when the
device is full), ``prompt_ids(loaded, text, batch, tokens, seed)``, ``kl_and_top1(reference,
test)`` and ``free_device(device)``; checks reach it only through ``load_backend``, so a
dependency that cannot be imported is one ``MissingExtra``, judged by the session's policy.

Suite checks do not call these modules: they ask typed capabilities
(``backends/capabilities.py``), which ``in_process.py`` (this module protocol, in the test
process) and ``streamed.py`` (an OpenAI-compatible server) implement.
"""

from __future__ import annotations

from typing import Any

from pytest_gpufit.backends import in_process, streamed
from pytest_gpufit.backends.capabilities import Loaded
from pytest_gpufit.errors import GpufitError

__all__ = [
    "CAPABILITIES",
    "CAPABILITY_TEXT",
    "Loaded",
    "MissingExtra",
    "first_line",
    "load_backend",
]


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


# What each backend can measure, as its implementation of the capabilities declares it. A check
# kind that needs more is a collection error (``pytest_gpufit.suites.kinds``).
CAPABILITIES: dict[str, frozenset[str]] = {
    "transformers": in_process.CAPABILITIES,
    "openai": streamed.CAPABILITIES,
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
