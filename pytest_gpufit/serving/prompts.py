"""Prompts of a requested token length, counted by the server itself, and made unique.

The client has no tokenizer (the server's is the one that counts), so a prompt is a repeated
word, sized from the server's own ``usage.prompt_tokens``: two probes fit tokens = a * words +
b (b: BOS and template tokens), the fitted length is sent and checked, and corrected while it
misses. The result states the count the server reported, never an assumed one. A probe asks
for one generated token and needs none of it (``OpenAIClient.count_prompt_tokens``).

Sent again and again, one prompt measures a cache: vLLM and SGLang keep the prefill of a
prompt they saw (prefix caching, on by default), and a server may replay a whole answer.
``unique_prompt`` gives each request a prompt of its own of the same length, with different
first words (as vLLM's ``random`` dataset puts a random prefix first), so no request's prefill
is another's and no answer can be replayed; ``prompt_keys`` numbers them from a random
start, so a rerun against the same server does not meet the prompts of the last run either.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pytest_gpufit.serving.client import OpenAIClient
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


# Fourteen common words that the usual vocabularies (byte-level BPE, SentencePiece) hold as
# one token each, with or without a space before them, as they hold "the"; all of them are in
# the word-level vocabulary of the tiny test checkpoints too, so that a random-weight model
# there goes on answering with words (one it does not know reads as <unk>, and its answer to
# that is often nothing).
UNIQUE_WORDS = (
    "the", "of", "is", "a", "and", "on", "city",
    "model", "card", "fast", "slow", "test", "runs", "capital",
)  # fmt: skip
# Words a key takes: 14 ** 4 = 38,416 prompts before one comes again. Only the first token has
# to differ for a prefix cache to miss; the rest of the prompt stays the word that was sized.
KEY_WORDS = 4


def key_words(key: int, count: int = KEY_WORDS) -> list[str]:
    """``key`` in ``count`` digits of base ``len(UNIQUE_WORDS)``, each one of the words,
    lowest digit first (so consecutive keys differ in the very first word, where a prefix
    cache starts).

    >>> key_words(1, 3), key_words(14, 3)
    (['of', 'the', 'the'], ['the', 'of', 'the'])
    """
    digits = []
    for _ in range(count):
        key, digit = divmod(key, len(UNIQUE_WORDS))
        digits.append(UNIQUE_WORDS[digit])
    return digits


def unique_prompt(text: str, key: int) -> str:
    """``text`` made a prompt of its own by ``key``. A prompt of one repeated word (what
    ``sized_prompt`` builds) keeps its word count: its first words spell the key, each a
    one-token word as the word it replaces, so the server counts the same length (each
    request's ``usage.prompt_tokens`` is reported, so a vocabulary where that fails shows).
    Any other prompt gets the key's words and a line break in front of it.

    >>> unique_prompt("the the the the", 1)
    'of the the the'
    >>> unique_prompt("Write a poem.", 2).splitlines()
    ['is the the the', 'Write a poem.']
    """
    words = text.split(" ")
    if len(set(words)) == 1 and words[0] and not any(c.isspace() for c in words[0]):
        count = min(KEY_WORDS, len(words))
        return " ".join(key_words(key, count) + words[count:])
    return " ".join(key_words(key)) + "\n" + text


def prompt_keys() -> Iterator[int]:
    """Keys for ``unique_prompt``: consecutive, from a random start (a fresh run of gpufit
    against a server that kept the last run's cache meets none of its prompts), save those
    whose first word is the sized prompt's own ("the"): a prompt of all one word would be the
    probe's prompt, which the server has seen.

    >>> keys = prompt_keys()
    >>> all(k % len(UNIQUE_WORDS) for k in itertools.islice(keys, 40))
    True
    """
    start = random.SystemRandom().randrange(len(UNIQUE_WORDS) ** KEY_WORDS)
    return (k for k in itertools.count(start) if k % len(UNIQUE_WORDS))


def distinct_prompts(text: str) -> int | None:
    """How many prompts of its own ``unique_prompt`` can make of ``text`` before one comes
    again (keys of ``prompt_keys``), or None for a prompt that takes a line of key words in
    front (35,672 of them). A sized prompt of few words has little room: one word, 13.

    >>> distinct_prompts("the"), distinct_prompts("the the the the the")
    (13, 35672)
    >>> distinct_prompts("Write a poem.") is None
    True
    """
    words = text.split(" ")
    if len(set(words)) == 1 and words[0] and not any(c.isspace() for c in words[0]):
        count = min(KEY_WORDS, len(words))
        room: int = (len(UNIQUE_WORDS) - 1) * len(UNIQUE_WORDS) ** (count - 1)
        return room
    return None


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
        counted = await client.count_prompt_tokens(model, text, chat=chat, timeout_s=timeout_s)
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
