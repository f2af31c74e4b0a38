"""The openai backend behind the typed capabilities: a server's streamed responses, as its
client observes them.

Light on purpose: it asks the ``Served`` handle (``backends/openai_backend.py``), which owns the
HTTP client; nothing here imports one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from pytest_gpufit.backends.capabilities import Generated, Prompt, Serve
from pytest_gpufit.errors import GpufitError

# What a server can be asked (``pytest_gpufit.backends.CAPABILITIES``).
CAPABILITIES = frozenset({"serve", "generate", "throughput", "load_levels", "golden"})


class Streamed:
    """One target's running server. Implements ``Generate`` and ``GoldenTopK``; ``served`` is
    the ``Serve`` handle the server checks (serves, load) ask."""

    in_process = False

    def __init__(self, served: Serve) -> None:
        self.served = served

    def guard(self, metrics: dict[str, Any], failures: list[str]) -> AbstractContextManager[None]:
        return self._guard(metrics, failures)

    @contextmanager
    def _guard(self, metrics: dict[str, Any], failures: list[str]) -> Iterator[None]:
        """Every check of a served target: the engine and log recorded, a server fault a failure
        naming its log (and the log's end when the server is gone)."""
        served = self.served
        metrics["served_model"] = served.model  # the model asked for: part of the check's setup
        engine = served.engine_text()
        if engine:
            metrics["engine"] = engine
        if served.log_path is not None:
            metrics["server_log"] = str(served.log_path)
        try:
            yield
        except GpufitError as error:
            failures.append(str(error))
        failures.extend(served.forbidden())
        # Asked after every check, passed or not: a launched server that left (or whose port
        # another process now holds) was not the one this check measured (issue 18.6, 18.7).
        gone = served.exited()
        if gone:
            tail = served.log_text(15)
            failures.append(f"{gone}; last lines of {served.log_path}:\n{tail}")
        elif failures and served.log_path is not None:
            failures.append(f"server log: {served.log_path}")

    def prompt(
        self, text: str | None, tokens: int, batch: int = 1, timeout_s: float = 120.0
    ) -> Prompt:
        if text is not None:
            return Prompt(text, None)  # the server's tokenizer reads it
        sized = self.served.prompt(tokens, timeout_s)
        return Prompt(sized.text, sized.tokens, counted=True)

    def generate(self, prompt: Prompt, new_tokens: int, *, ignore_eos: bool = False) -> Generated:
        extra = {"ignore_eos": True} if ignore_eos else {}
        served = self.served
        text = prompt.payload
        if prompt.unique:
            # late: the prompt helpers import the HTTP client, loaded once a server is asked
            from pytest_gpufit.serving.prompts import unique_prompt

            text = unique_prompt(text, next(served.keys))  # the target's one run of keys
        r = served.stream(served.request(text, new_tokens, **extra))
        return Generated(
            count=r.completion_tokens if r.completion_tokens is not None else r.content_chunks,
            ttft_s=r.ttft_s,
            decode_s=r.e2e_s - r.ttft_s,
            prompt_tokens=r.prompt_tokens,
            stream=r,
        )

    def decode(self, token_ids: list[int]) -> str | None:
        return None  # a server answers with text (Generated.stream.text), never bare ids

    def greedy_topk(self, prompt: Prompt, new_tokens: int, k: int) -> dict[str, Any]:
        """Greedy tokens and the server's top-k logprobs, in the golden record's shape."""
        served = self.served
        result = served.stream(served.request(prompt.payload, new_tokens, logprobs=k))
        if not result.logprobs:
            raise GpufitError(
                f"the server at {served.base_url} returned no logprobs (asked for top {k}); "
                "precision over HTTP needs a server that returns them (vLLM, SGLang and "
                "llama-server do; transformers serve does not)"
            )
        tokens, top_ids, top_logprobs = [], [], []
        for step in result.logprobs:
            top = dict(step.top)
            top.setdefault(step.token, step.logprob)  # the chosen token belongs to its top list
            tokens.append(step.token)
            top_ids.append(list(top))
            top_logprobs.append([round(v, 6) for v in top.values()])
        return {"tokens": tokens, "top_ids": top_ids, "top_logprobs": top_logprobs}
