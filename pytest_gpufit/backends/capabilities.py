"""What a backend offers a suite check, as typed interfaces.

A check is written once over these interfaces and asks its context for the one it needs
(``ctx.generator()``, ``ctx.golden_topk()``, ``ctx.in_process_model()``, ``ctx.server()``).
Each backend implements those it has: ``InProcess`` (``backends/in_process.py``: the model in
this process, the transformers backend) and ``Streamed`` (``backends/streamed.py``: an
OpenAI-compatible server, as its client observes it). At collection the same capabilities go by
the names in ``pytest_gpufit.backends.CAPABILITIES``, which the check kinds' needs name:

- ``load``, ``peak_memory``, ``fp32_logits``: ``InProcessModel``
- ``generate``, ``throughput``: ``Generate`` (``token_ids``: ``Generated.token_ids``; ``batch``:
  ``prompt(batch=N)``)
- ``golden``: ``GoldenTopK``
- ``serve``, ``load_levels``: ``Serve``

Importing this module imports no backend: they load when a check first asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # types only: the HTTP client is imported where a server is asked
    from pytest_gpufit.serving.client import GenRequest, StreamResult
    from pytest_gpufit.serving.facts import EngineAllocation
    from pytest_gpufit.serving.load import LevelResult, Slo
    from pytest_gpufit.serving.prompts import SizedPrompt


class Loaded(Protocol):
    """A model on a device, with what loading it measured."""

    device: Any
    dtype: str
    load_seconds: float
    peak_allocated_bytes: int | None
    wrong_dtype_parameters: tuple[str, ...]
    tokenizer: Any  # None when the model folder has none

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


@dataclass(frozen=True)
class Prompt:
    """A prompt in the form its backend takes: token ids in process, text for a server."""

    payload: Any  # a (batch, length) array of ids, or the text a server tokenizes
    tokens: int | None  # its length in tokens, where the backend knows it
    counted: bool = False  # ``tokens`` is a server's own count of a sized prompt: recorded
    # Each request gets a prompt of its own of the same length (``prompts: unique``), so a
    # server's prefix cache cannot answer one prefill from another's; in process nothing is
    # cached between generations, so the backend there may ignore it.
    unique: bool = False


@dataclass(frozen=True)
class Generated:
    """One generation: the tokens it produced and how long they took.

    ``count`` is the backend's own count in process; from a server, its usage count (or the
    content chunks where it reports none). ``stream`` is the server's response as the client
    observed it (text, chunks, finish reason, gaps), for the checks that cross-check a claim.
    """

    count: int  # new tokens per sequence
    ttft_s: float
    decode_s: float  # first token to last
    prompt_tokens: int | None = None  # the backend's count of the prompt, where it gives one
    token_ids: list[int] | None = None  # in process: the ids of the first sequence
    stream: StreamResult | None = None


class Prompts(Protocol):
    def prompt(
        self, text: str | None, tokens: int, batch: int = 1, timeout_s: float = 120.0
    ) -> Prompt:
        """``text`` as the backend takes it, or a prompt of ``tokens`` tokens."""
        ...


@runtime_checkable
class Generate(Prompts, Protocol):
    """Greedy generation, timed. ``in_process``: the backend generates in this process, so its
    count and timer are its own (a short run or a non-positive time is a broken backend);
    otherwise they are a server's stream as the client saw it."""

    in_process: bool

    def generate(self, prompt: Prompt, new_tokens: int, *, ignore_eos: bool = False) -> Generated:
        """Generate up to ``new_tokens``; ``ignore_eos`` asks for exactly that many (in process
        generation always gives exactly that many)."""
        ...

    def decode(self, token_ids: list[int]) -> str | None:
        """The text of ``token_ids``; None when there is no tokenizer to decode with."""
        ...


@runtime_checkable
class GoldenTopK(Prompts, Protocol):
    def greedy_topk(self, prompt: Prompt, new_tokens: int, k: int) -> dict[str, Any]:
        """Greedy tokens with each step's top-k ids and log-probabilities (``tokens``,
        ``top_ids``, ``top_logprobs``): the golden record a baseline stores and compares."""
        ...


@runtime_checkable
class InProcessModel(Prompts, Protocol):
    """The model loaded in this process: what loading measured, and full logits."""

    def loaded(self) -> Loaded:
        """The model on its device (loaded once per session)."""
        ...

    def kl_and_top1(self, reference: Any, test: Any) -> tuple[float, float]:
        """Mean KL(reference || test) and the share of positions whose top-1 agree."""
        ...


class Serve(Protocol):
    """A running OpenAI-compatible server and what it said about itself."""

    model: str
    base_url: str
    startup_s: float | None
    server: Any  # the launched process (with ``pgid``), or None for a server already running
    keys: Iterator[int]  # unique prompts' keys: one run for every check of the target

    @property
    def log_path(self) -> Path | None: ...

    def max_model_len(self) -> int | None: ...

    def allocation(self) -> EngineAllocation | None: ...

    def engine_text(self) -> str | None: ...

    def forbidden(self) -> list[str]: ...

    def exited(self) -> str | None: ...

    def log_text(self, lines: int = 20) -> str: ...

    def prompt(self, tokens: int, timeout_s: float = 120.0) -> SizedPrompt: ...

    def request(self, prompt: str, max_tokens: int, **kwargs: Any) -> GenRequest: ...

    def stream(self, request: GenRequest) -> StreamResult: ...

    def load(
        self,
        request: GenRequest,
        concurrency: Sequence[int],
        rates: Sequence[float],
        requests: int,
        max_seconds: float,
        slo: Slo | None,
        progress: Callable[[str], None] | None,
        prompts: str = "unique",
    ) -> tuple[LevelResult, ...]: ...


class Bound(Protocol):
    """One target's backend as a check meets it."""

    def guard(self, metrics: dict[str, Any], failures: list[str]) -> AbstractContextManager[None]:
        """Around each check that asks the backend: what the backend adds to every such check
        (a server: its engine and log, a fault turned into a failure that names the log)."""
        ...
