"""Prompts of a requested token length, counted by the server itself.

The client has no tokenizer (the server's is the one that counts), so a prompt is a repeated
word, sized from the server's own ``usage.prompt_tokens``: two probes fit tokens = a * words +
b (b: BOS and template tokens), the fitted length is sent and checked, and corrected while it
misses. The result states the count the server reported, never an assumed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pytest_gpufit.serving.client import GenRequest, OpenAIClient
from pytest_gpufit.serving.errors import EndpointError


@dataclass(frozen=True)
class SizedPrompt:
    """A prompt and the number of tokens the server counted for it."""

    text: str
    tokens: int


def repeat_words(count: int, word: str = "the") -> str:
    """``count`` copies of ``word`` separated by spaces.

    >>> repeat_words(3)
    'the the the'
    """
    return " ".join([word] * max(count, 0))


def words_for(target: int, probes: Sequence[tuple[int, int]]) -> int:
    """Words needed for ``target`` tokens from (words, tokens) probes, by a line through the two
    most recent probes (one probe: the same ratio through the origin).

    >>> words_for(100, [(100, 101), (50, 51)])
    99
    >>> words_for(64, [(64, 130)])
    32
    """
    (n1, t1) = probes[-1]
    if len(probes) >= 2 and probes[-2][0] != n1:
        n2, t2 = probes[-2]
        slope = (t1 - t2) / (n1 - n2)
        if slope > 0:
            return max(1, round(n1 + (target - t1) / slope))
    return max(1, round(n1 * target / t1)) if t1 else target


async def _count(
    client: OpenAIClient, model: str, text: str, chat: bool, timeout_s: float = 120.0
) -> int:
    request = GenRequest(model=model, prompt=text, max_tokens=1, chat=chat, timeout_s=timeout_s)
    result = await client.stream(request)
    if result.prompt_tokens is None:
        raise EndpointError(
            f"{client.base_url}: the server reported no usage.prompt_tokens, so a prompt of a "
            "given token length cannot be checked",
            "short",
        )
    return result.prompt_tokens


async def sized_prompt(
    client: OpenAIClient,
    model: str,
    tokens: int,
    *,
    word: str = "the",
    chat: bool = False,
    tolerance: int = 0,
    attempts: int = 5,
    timeout_s: float = 120.0,
) -> SizedPrompt:
    """A prompt the server counts as ``tokens`` tokens (within ``tolerance``)."""
    probes: list[tuple[int, int]] = []
    words = tokens
    for _ in range(attempts):
        text = repeat_words(words, word)
        counted = await _count(client, model, text, chat, timeout_s)
        if abs(counted - tokens) <= tolerance:
            return SizedPrompt(text, counted)
        probes.append((words, counted))
        if len(probes) == 1:
            words = max(1, words // 2) if words > 1 else 2
            continue
        nxt = words_for(tokens, probes)
        if nxt == words:
            break
        words = nxt
    raise EndpointError(
        f"{client.base_url}: could not build a prompt of {tokens} tokens from {word!r} "
        f"(server counts per word count: {probes}); use a prompt_tokens the template allows",
        "config",
    )
