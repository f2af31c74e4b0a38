"""The in-process backends (transformers) behind the typed capabilities: the model is loaded
in this process, so counts, timers and logits are the backend's own.

Light on purpose: the backend module (which imports torch) and the model come from the two
callables, at a check's first call, so a broken extra is the MissingExtra the policy judges.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from pytest_gpufit.backends.capabilities import Generated, Loaded, Prompt

# What the in-process backend can measure (``pytest_gpufit.backends.CAPABILITIES``).
CAPABILITIES = frozenset(
    {"load", "peak_memory", "generate", "token_ids", "throughput", "batch", "fp32_logits", "golden"}
)


class InProcess:
    """A backend module (``load``, ``prompt_ids``, ``kl_and_top1``...) and its loaded model.

    Implements ``Generate``, ``GoldenTopK`` and ``InProcessModel``.
    """

    in_process = True

    def __init__(self, load: Callable[[], Loaded], module: Callable[[], Any], seed: int) -> None:
        self._load = load  # the session's model cache: loads once, shares across checks
        self._module = module
        self.seed = seed

    def guard(self, metrics: dict[str, Any], failures: list[str]) -> AbstractContextManager[None]:
        return nullcontext()

    def loaded(self) -> Loaded:
        return self._load()

    def prompt(
        self, text: str | None, tokens: int, batch: int = 1, timeout_s: float = 120.0
    ) -> Prompt:
        loaded = self._load()
        # Through the module, so a missing torch is a MissingExtra the policy judges.
        ids = self._module().prompt_ids(loaded, text, batch, tokens, self.seed)
        return Prompt(ids, len(ids[0]))

    def generate(self, prompt: Prompt, new_tokens: int, *, ignore_eos: bool = False) -> Generated:
        tokens, ttft, decode = self._load().generate(prompt.payload, new_tokens)
        first = tokens[0]
        return Generated(
            count=len(first),
            ttft_s=ttft,
            decode_s=decode,
            prompt_tokens=prompt.tokens,
            token_ids=[int(t) for t in first],
        )

    def decode(self, token_ids: list[int]) -> str | None:
        loaded = self._load()
        return None if loaded.tokenizer is None else loaded.decode(token_ids)

    def greedy_topk(self, prompt: Prompt, new_tokens: int, k: int) -> dict[str, Any]:
        return self._load().greedy_topk(prompt.payload, new_tokens, k)

    def kl_and_top1(self, reference: Any, test: Any) -> tuple[float, float]:
        result: tuple[float, float] = self._module().kl_and_top1(reference, test)
        return result
