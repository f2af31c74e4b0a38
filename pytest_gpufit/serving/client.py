"""A streaming client for OpenAI-compatible servers that measures what a user of the server sees.

Per request: TTFT (request sent -> first content chunk), ITL (gaps between content chunks, as
vLLM's ``benchmark_serving`` and GuideLLM record them), E2E (request sent -> last event), and
token counts from the server's ``usage`` (asked for with ``stream_options.include_usage``).

The transport is aiohttp with a small SSE decoder (``SSEDecoder``) instead of httpx + httpx-sse:
on one core httpx cost ~2.5 ms of CPU per 16-chunk streamed request, which caps a load
generator near 300 requests/s; aiohttp costs ~0.7 ms (BENCHMARKS.md, "Serving client").
No maintained SSE client exists for aiohttp (aiohttp-sse is a server; aiohttp-sse-client2 had
its last release in 2023 and is an EventSource that reconnects, not a reader of one POST), so
the decoder follows the WHATWG event-stream rules itself: data/event fields, comments, all
three line endings.

Every fault raises ``EndpointError`` with one readable message (and a ``kind``): nothing
listening, 401, an unknown model, an HTTP error status, an error event inside a 200 stream
(vLLM streams one when its engine dies), malformed events, a connection dropped mid-stream, a
stall, and a token count that came out short when the full count was required.

What the server says about a stream is held against what the client received before it is
believed (README, "What the gate believes and what it checks"): ``usage.completion_tokens``
against the chunks, bytes and events that arrived (``count_disagreement``) and the server's own
logprobs or token ids; ``finish_reason: length`` against that count; each event's ``model``
against the model asked for; the logprob tokens against the streamed text
(``logprob_text_disagreement``); and the pacing a decode rate, ITL or TPOT needs against the
socket reads that delivered the events (``buffering``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
from aiohttp.client_proto import ResponseHandler

from pytest_gpufit.serving.errors import EndpointError
from pytest_gpufit.serving.facts import ENGINE_PROBES, EngineFacts, engine_from


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``GET /v1/models``; ``max_model_len`` where the server lists it (vLLM)."""

    id: str
    owned_by: str | None = None
    max_model_len: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """The log-probability of one generated token and the server's top alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenRequest:
    """One generation request. ``chat`` picks ``/chat/completions`` over ``/completions``.

    ``ignore_eos`` asks the server to generate exactly ``max_tokens``, the ways of ``EXACT_WAYS``
    in turn: a server that refuses one by name is asked the next way (and not that one again by
    this client), and at last without any. With
    ``require_max_tokens`` a count below ``max_tokens`` is an error (a throughput figure over
    fewer tokens than asked would mislead). ``logprobs`` asks for that many top alternatives.
    ``paced=True`` says the stream's pacing will be judged (a decode rate, ITL, TPOT): a
    stream of four or more events (or tokens) that arrives in a burst is then refused as
    ``buffered``; with ``paced=False`` it comes back with ``StreamResult.buffered`` saying why
    its gaps are left out (TTFT, E2E and the text stay measured). Unset, it follows
    ``ignore_eos``: the requests that ask for an exact count are the ones timed.
    ``need_content`` (the default) refuses a stream that carried no text; without it an empty
    answer (a model whose first token is EOS) is one, its TTFT taken at its first token's
    event.
    """

    model: str
    prompt: str
    max_tokens: int = 16
    chat: bool = False
    temperature: float = 0.0
    ignore_eos: bool = False
    require_max_tokens: bool = False
    logprobs: int | None = None
    timeout_s: float = 120.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    paced: bool | None = None
    need_content: bool = True


@dataclass(frozen=True)
class StreamResult:
    """What one streamed request measured. Times in seconds from the moment it was sent.

    ``first_token_at`` is the ``time.perf_counter()`` reading at the first content chunk (the
    client-overhead benchmark compares it with the server's clock). ``logprobs`` is None when
    the server returned none, even if they were asked for. ``completion_tokens`` is the
    server's count once it agreed with what arrived (``count_disagreement``). ``events`` counts
    the events that carried a choice, ``reads`` the distinct socket reads that delivered them
    (``DISTINCT_READ_S``), ``content_bytes`` the UTF-8 bytes of text; ``buffered`` says why the
    stream's gaps cannot be judged (then ``itl_s`` is empty and ``tpot_s`` None).
    """

    ttft_s: float
    itl_s: tuple[float, ...]
    e2e_s: float
    text: str
    content_chunks: int
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    ignore_eos_applied: bool
    logprobs: tuple[TokenLogprob, ...] | None
    first_token_at: float
    events: int = 0
    reads: int = 0
    content_bytes: int = 0
    buffered: str | None = None
    exact_by: str | None = None  # how an exact count was asked (``EXACT_WAYS``), None: not

    @property
    def tokens(self) -> int:
        """The output tokens: the server's (checked) count, else the content chunks received.

        >>> StreamResult(0.1, (), 0.2, "ab", 2, 5, None, "stop", False, None, 0.0).tokens
        2
        """
        return self.completion_tokens if self.completion_tokens is not None else self.content_chunks

    @property
    def exact_words(self) -> str:
        """How this request asked for an exact count, in words (``exact_words``)."""
        return exact_words(self.exact_by)

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first, (E2E - TTFT) / (tokens - 1), as vLLM's TPOT;
        None for fewer than two tokens or a buffered stream.

        >>> r = StreamResult(0.1, (), 1.1, "", 0, 5, 11, "length", True, None, 0.0)
        >>> round(r.tpot_s, 3)
        0.1
        """
        tokens = self.completion_tokens if self.completion_tokens is not None else 0
        if tokens < 2 or self.buffered is not None:
            return None
        return (self.e2e_s - self.ttft_s) / (tokens - 1)

    @property
    def decode_tok_s(self) -> float | None:
        """Output tokens per second after the first, (tokens - 1) / (E2E - TTFT): the rate a
        user of the stream saw; None where the stream cannot yield one (buffered, < 2 tokens).

        >>> StreamResult(0.1, (), 1.1, "", 3, 5, 11, "length", True, None, 0.0).decode_tok_s
        10.0
        >>> StreamResult(0.1, (), 0.1, "", 3, 5, 11, "length", True, None, 0.0,
        ...              buffered="buffered").decode_tok_s is None
        True
        """
        span = self.e2e_s - self.ttft_s
        if self.buffered is not None or self.tokens < 2 or span <= 0:
            return None
        return (self.tokens - 1) / span


# --- cross-checks: what the server says against what the client received ---------------------

# A token that renders as text is at least one byte of it: byte-level BPE (GPT-2, Llama 3,
# Qwen), SentencePiece with byte fallback (Llama 2, Mistral) and tiktoken all split text into
# pieces of one byte or more, and a byte of a multi-byte character arrives once the character
# is whole. Tokens that render as nothing are special tokens the server skips (an EOS that
# ignore_eos runs past), ids past the tokenizer's vocabulary, a SentencePiece leading-space
# marker: servers stream every engine step as an event of its own (vLLM sends it with empty
# text; measured: 24 of 32 tokens silent in 32 events), so each event may hide a few of them,
# and a stream a few more (a last EOS sent with no event, a character cut off at the end).
SILENT_PER_EVENT = 2
SILENT_PER_STREAM = 4


@dataclass(frozen=True)
class Received:
    """What the client counted in one stream itself: the independent side of the usage check.

    ``logprob_tokens`` and ``token_ids`` are the entries the server returned (None when it
    returned none); each names one generated token, so where they come back the count is exact.
    """

    content_chunks: int
    events: int
    content_bytes: int
    logprob_tokens: int | None = None
    token_ids: int | None = None

    @property
    def most_tokens(self) -> int:
        """The most tokens these bytes and events can hold (see ``SILENT_PER_EVENT``).

        >>> Received(content_chunks=2, events=2, content_bytes=8).most_tokens
        16
        """
        return self.content_bytes + SILENT_PER_EVENT * self.events + SILENT_PER_STREAM


def count_disagreement(
    said: int | None, got: Received, cap: int | None, finish: str | None
) -> str | None:
    """Why the server's ``usage.completion_tokens`` (``said``) and its ``finish_reason`` cannot
    be true of the stream that arrived (``got``, for a request capped at ``cap``), or None.

    Several tokens to a chunk is legal (a detokenizer holding a partial character, vLLM
    merging steps when its consumer falls behind, ``stream_interval``, speculative decoding):
    the bound is bytes, not chunks. Where the server returned logprobs or token ids, their
    count must be the count.

    >>> liar = Received(content_chunks=2, events=2, content_bytes=8)
    >>> print(count_disagreement(64, liar, 64, "length"))  # doctest: +NORMALIZE_WHITESPACE
    usage.completion_tokens is 64, but the stream carried 8 bytes of text in 2 events: at most
    16 tokens (a token is a byte of text or more, save 2 silent ones an event and 4 a stream)
    >>> count_disagreement(0, Received(16, 16, 64), 16, "length")
    'usage.completion_tokens is 0, but 16 chunks of text arrived (each holds a token or more)'
    >>> count_disagreement(2, Received(2, 2, 10), 16, "length").split(": ")[0]
    "finish_reason 'length' after 2 of the 16 tokens max_tokens allows"
    >>> count_disagreement(5, Received(3, 3, 12, logprob_tokens=4), 16, "stop")
    'usage.completion_tokens is 5, but the server returned logprobs for 4 tokens'
    >>> count_disagreement(24, Received(8, 32, 39), 32, "stop") is None
    True
    """
    if said is not None:
        if said < got.content_chunks:
            return (
                f"usage.completion_tokens is {said}, but {got.content_chunks} chunks of text "
                "arrived (each holds a token or more)"
            )
        for what, count in (("logprobs", got.logprob_tokens), ("token ids", got.token_ids)):
            if count is not None and count != said:
                return (
                    f"usage.completion_tokens is {said}, but the server returned {what} for "
                    f"{count} tokens"
                )
        if said > got.most_tokens:
            return (
                f"usage.completion_tokens is {said}, but the stream carried {got.content_bytes} "
                f"bytes of text in {got.events} events: at most {got.most_tokens} tokens (a "
                f"token is a byte of text or more, save {SILENT_PER_EVENT} silent ones an "
                f"event and {SILENT_PER_STREAM} a stream)"
            )
    if finish == "length" and cap is not None:
        known = [c for c in (said, got.logprob_tokens, got.token_ids) if c is not None]
        count = min(known) if known else got.most_tokens
        if count < cap:
            held = "" if known else "at most "
            return (
                f"finish_reason 'length' after {held}{count} of the {cap} tokens max_tokens "
                "allows: a generation its length limit cut has all of them"
            )
    return None


# Reads closer together than this are one delivery: the TCP segments of one write arrive
# microseconds apart (on loopback one read holds 64 KiB; at 1 Gb/s a 1448-byte segment takes
# 12 us), and a train of them on a slower link carries several events a segment, which
# ``EVENTS_PER_READ`` catches. A fast honest server's events are each a write of their own,
# and each arrives in a read of its own: a tiny model on a CPU writes them 0.3 ms apart
# (measured: 32 events in 32 reads, 0.3 ms apart; with 0.5 ms here it was refused as
# buffered), a CPU vLLM 3 ms apart, and no server decodes one stream at 10,000 tok/s.
DISTINCT_READ_S = 0.0001
# More events than this to a distinct read, on average, is a stream delivered in bursts: a
# client on a busy machine that reads late gets two or three at once, not four on average.
EVENTS_PER_READ = 4
# A buffered stream is refused (``GenRequest.paced``) from this many events (or tokens): two
# or three in one read are as likely a client that read late, or vLLM merging the steps its
# API process fell behind on (a busy CPU).
REFUSE_BUFFERED_FROM = 4


def buffering(events: int, reads: int, tokens: int = 0) -> str | None:
    """Why a stream of ``events`` events (``tokens`` tokens) delivered in ``reads`` distinct
    reads cannot yield a decode rate, ITL or TPOT (a buffering proxy, an ingress, a replayed
    answer, a whole answer held and sent as one event), or None.

    >>> print(buffering(64, 1))  # doctest: +NORMALIZE_WHITESPACE
    buffered: is a proxy in front of the server? 64 events arrived in 1 distinct read (a client
    too busy to read its streams would see that too)
    >>> buffering(64, 20) is None, buffering(64, 15) is None, buffering(1, 1) is None
    (True, False, True)
    >>> print(buffering(1, 1, tokens=16))  # doctest: +NORMALIZE_WHITESPACE
    buffered: is a proxy in front of the server? 16 tokens arrived in 1 distinct read (a client
    too busy to read its streams would see that too)
    """
    if max(events, tokens) < 2 or (reads > 1 and reads * EVENTS_PER_READ >= events):
        return None
    what = f"{events} events" if events >= 2 else f"{tokens} tokens"
    return (
        f"buffered: is a proxy in front of the server? {what} arrived in {reads} "
        f"distinct read{'s' if reads != 1 else ''} (a client too busy to read its streams "
        "would see that too)"
    )


# Token strings of a byte-level or SentencePiece vocabulary, as some servers return them raw.
_RAW_SPACE = str.maketrans({"\u2581": " ", "\u0120": " ", "\u010a": "\n"})


def logprob_text_disagreement(tokens: Sequence[str], text: str) -> str | None:
    """Why the logprobs' tokens (joined) are not the streamed ``text``, or None.

    White space is left out on both sides (a server may return a token without the space its
    text carries: SentencePiece, vLLM on a word-level tokenizer). A token that is part of a
    character (``\ufffd``, ``bytes:``) makes the comparison ASCII-only; tokens given as ids
    (vLLM's ``token_id:N``) are not text and are not compared.

    >>> logprob_text_disagreement(["fast", "fast"], " fast fast") is None
    True
    >>> logprob_text_disagreement([" Paris", " is"], " London is")
    "the logprobs' tokens say 'Parisis', the streamed text says 'Londonis'"
    >>> logprob_text_disagreement(["\ufffd", "\ufffd", " ok"], "\u4e2d ok") is None
    True
    """
    if any(t.startswith("token_id:") for t in tokens):
        return None
    joined = "".join(tokens).translate(_RAW_SPACE)
    said, got = "".join(joined.split()), "".join(text.split())
    if "\ufffd" in joined or any(t.startswith("bytes:") for t in tokens):
        said = "".join(c for c in said.replace("\ufffd", "") if c.isascii())
        said = "".join(said.split("bytes:"))
        got = "".join(c for c in got if c.isascii())
    if said == got:
        return None
    return f"the logprobs' tokens say {said[:200]!r}, the streamed text says {got[:200]!r}"


class SSEError(ValueError):
    """The bytes are not an event stream this decoder will hold (a line past ``MAX_LINE``)."""


@dataclass(frozen=True)
class SSEvent:
    """One dispatched server-sent event: its ``event`` type ("message" unless named) and data."""

    event: str
    data: str


BOM = b"\xef\xbb\xbf"

# Finish reasons that say the server gave up on the request (vLLM and SGLang say "abort").
ABORTED = frozenset({"abort", "error"})


class SSEDecoder:
    """Incremental event-stream decoder (WHATWG HTML, "Interpreting an event stream").

    Feed it bytes as they arrive; it returns the events each piece completes. Lines end in
    CRLF, LF or CR (a CR at the end of one piece and an LF at the start of the next are one
    ending); ``data`` lines join with LF; lines starting with ``:`` are comments; ``id`` and
    ``retry`` are read and ignored (a load generator never reconnects). An ``error`` field line
    (llama.cpp's way of streaming an error) is dispatched as an event of type "error".

    >>> d = SSEDecoder()
    >>> d.feed(b'data: {"a": 1}\\n\\nevent: error\\r\\ndata: x\\r\\ndata: y\\r')
    [SSEvent(event='message', data='{"a": 1}')]
    >>> d.feed(b'\\n\\r\\n: comment\\n\\ndata\\n\\n')
    [SSEvent(event='error', data='x\\ny'), SSEvent(event='message', data='')]
    """

    # One line longer than this is not a token stream: stop instead of buffering without end.
    MAX_LINE = 16 * 2**20

    __slots__ = ("_buffer", "_data", "_data_len", "_event", "_held", "_skip_lf", "_started")

    def __init__(self) -> None:
        # The unfinished line, in pieces: joined once when its end comes (joining on every
        # read made a long line quadratic: 11 s of CPU for 15 MiB in 64 KiB reads).
        self._buffer: list[bytes] = []
        self._held = 0
        self._data: list[str] = []
        self._data_len = 0
        self._event = ""
        self._skip_lf = False
        self._started = False

    def feed(self, piece: bytes) -> list[SSEvent]:
        if not piece:
            return []  # an empty read says nothing, not even that a CRLF's LF is not coming
        if not self._started:
            # The spec drops one leading BOM, which may itself arrive split across reads.
            piece = b"".join(self._buffer) + piece
            self._buffer = []
            if len(piece) < len(BOM) and BOM.startswith(piece):
                self._buffer = [piece]
                return []
            self._started = True
            piece = piece.removeprefix(BOM)
        if self._skip_lf and piece[:1] == b"\n":
            piece = piece[1:]
        self._skip_lf = False
        if not piece:
            return []
        if b"\n" not in piece and b"\r" not in piece:
            self._hold(piece)
            return []
        text = b"".join(self._buffer) + piece
        self._buffer, self._held = [], 0
        lines = text.splitlines(keepends=True)  # bytes split only on CR, LF, CRLF
        last = lines[-1]
        if last[-1:] not in (b"\n", b"\r"):
            self._hold(lines.pop())
        else:
            # A CR that ends this piece may be the first half of a CRLF split across pieces.
            self._skip_lf = last.endswith(b"\r")
        events: list[SSEvent] = []
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                if self._data:
                    events.append(SSEvent(self._event or "message", "\n".join(self._data)))
                self._data = []
                self._data_len = 0
                self._event = ""
                continue
            if line[:1] == b":":
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value.decode("utf-8", "replace"))
                self._data_len += len(value)
                if self._data_len > self.MAX_LINE:
                    # data lines that never meet a blank line would be held without end
                    raise SSEError(f"an event of over {self.MAX_LINE} bytes of data")
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"error":
                # Not a WHATWG field, but llama.cpp's server streams its errors as
                # "error: {...}" lines (then "data: [DONE]"): ignored, a failed generation
                # would read as a finished one.
                self._data.append(value.decode("utf-8", "replace"))
                self._event = "error"
        return events

    def _hold(self, piece: bytes) -> None:
        self._buffer.append(piece)
        self._held += len(piece)
        if self._held > self.MAX_LINE:
            raise SSEError(f"a line of over {self.MAX_LINE} bytes without a line ending")


def api_key_from_env(name: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key held in the environment variable ``name`` (the name, never the key, is config).

    A key read from a file often ends in a newline: the white space around it is dropped. A
    control character inside it would break the Authorization header: a config error.

    >>> api_key_from_env("K", {"K": "sk-1"})
    'sk-1'
    >>> api_key_from_env("K", {"K": "sk-1\\n"})
    'sk-1'
    >>> api_key_from_env(None) is None
    True
    """
    if name is None:
        return None
    env = os.environ if environ is None else environ
    value = (env.get(name) or "").strip()
    if not value:
        raise EndpointError(
            f"api_key_env names {name}, but that environment variable is not set or empty; "
            f"export {name}=<key> or drop api_key_env",
            kind="config",
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise EndpointError(
            f"api_key_env names {name}, but its value holds a control character (a line break "
            f"inside the key?); export {name} with the key alone",
            kind="config",
        )
    return value


def server_root(base_url: str) -> str:
    """The server's root URL (where /health, /version and /metrics live) from its API base.

    >>> server_root("http://127.0.0.1:8000/v1/")
    'http://127.0.0.1:8000'
    >>> server_root("http://h:1")
    'http://h:1'
    """
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def loads_json(text: str) -> Any:
    """``json.loads``, with JSON nested too deep for the parser a ValueError like any bad JSON.

    >>> loads_json("[" * 100000 + "]" * 100000)
    Traceback (most recent call last):
    ValueError: JSON nested too deep to read
    """
    try:
        return json.loads(text)
    except RecursionError:
        # A server's bytes must not raise past the client's EndpointError (it was RecursionError).
        raise ValueError("JSON nested too deep to read") from None


def error_message(body: str) -> str:
    """The server's own words from an error body (OpenAI, vLLM, FastAPI and llama.cpp shapes).

    >>> error_message('{"error": {"message": "The model `x` does not exist.", "code": 404}}')
    'The model `x` does not exist.'
    >>> error_message('{"object": "error", "message": "bad", "type": "BadRequestError"}')
    'bad'
    >>> error_message('{"detail": "Server is pinned to m"}')
    'Server is pinned to m'
    >>> error_message('{"error": "boom"}')
    'boom'
    >>> error_message("<html>502 Bad Gateway</html>")
    '<html>502 Bad Gateway</html>'
    """
    try:
        data = loads_json(body)
    except ValueError:
        return body.strip()[:300]
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message", value)
            if value:
                return str(value)[:500]
    return body.strip()[:300]


def stream_error(data: Mapping[str, Any]) -> str | None:
    """The error an event inside a 200 stream carries, or None for an ordinary chunk.

    >>> stream_error({"error": {"message": "engine dead", "code": 500}})
    'engine dead'
    >>> stream_error({"object": "error", "message": "Unsupported CPU attention"})
    'Unsupported CPU attention'
    >>> stream_error({"choices": [{"text": "a"}]}) is None
    True
    """
    if "error" in data and data["error"]:
        return error_message(json.dumps(data))
    if data.get("object") == "error":
        return str(data.get("message", data))[:500]
    return None


# The largest count a server may state (tokens of a prompt, an output, a context): a billion is
# past every model's context; a number beyond it (a 400-digit integer, 1e400) is not a count.
MAX_COUNT = 10**9


def bounded_count(value: Any, what: str, *, least: int = 0) -> int:
    """``value`` as a count from ``least`` to ``MAX_COUNT``; ValueError naming ``what`` otherwise.

    A whole float (4096.0) is taken; a bool, a string, a fraction, NaN or infinity is not.

    >>> bounded_count(4096.0, "max_model_len", least=1)
    4096
    >>> bounded_count(10**400, "max_model_len")
    Traceback (most recent call last):
    ValueError: max_model_len is a 401-digit number, not a count (0 to 1,000,000,000)
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or not least <= value <= MAX_COUNT:
        shown = (
            f"a {len(str(value))}-digit number"
            if type(value) is int and value > MAX_COUNT
            else (repr(value))
        )
        raise ValueError(f"{what} is {shown}, not a count ({least} to {MAX_COUNT:,})")
    return value


def _usage_of(usage: Any) -> dict[str, int | None]:
    """The token counts of a ``usage`` object; ValueError when one is not a count.

    A count the server left out or sent as null is None; one that is not a whole number of
    at least zero (a string, a fraction, NaN, a negative, past ``MAX_COUNT``) is not something
    a gate may judge on.

    >>> _usage_of({"prompt_tokens": 5, "completion_tokens": None, "total_tokens": 5})
    {'prompt_tokens': 5, 'completion_tokens': None}
    >>> _usage_of({"completion_tokens": -1})
    Traceback (most recent call last):
    ValueError: usage.completion_tokens is -1, not a token count
    """
    if not isinstance(usage, Mapping):
        raise ValueError(f"usage is {usage!r}, not an object")
    counts: dict[str, int | None] = {}
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_COUNT):
            shown = (
                f"a {len(str(value))}-digit number"
                if type(value) is int and value > 0
                else (repr(value))
            )
            raise ValueError(f"usage.{key} is {shown}, not a token count")
        counts[key] = value
    return counts


def _logprobs_of(choice: Mapping[str, Any], chat: bool) -> list[TokenLogprob]:
    """Token logprobs in one chunk's choice, for both the completions and the chat shape."""
    lp = choice.get("logprobs")
    if not lp:
        return []
    out: list[TokenLogprob] = []
    if chat:
        for item in lp.get("content") or []:
            top = tuple(
                (str(t["token"]), float(t["logprob"])) for t in item.get("top_logprobs") or []
            )
            out.append(TokenLogprob(str(item["token"]), float(item["logprob"]), top))
        return out
    tops = lp.get("top_logprobs") or []
    for i, (token, value) in enumerate(
        zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], strict=False)
    ):
        top_map = tops[i] if i < len(tops) and tops[i] else {}
        top = tuple((str(k), float(v)) for k, v in top_map.items())
        number = float(value) if value is not None else float("nan")
        out.append(TokenLogprob(str(token), number, top))
    return out


def _content_of(choice: Mapping[str, Any], chat: bool) -> str:
    if not chat:
        return str(choice.get("text") or "")
    delta = choice.get("delta") or {}
    # Reasoning tokens are output tokens too (vLLM's benchmark counts them the same way).
    return str(
        delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
    )


def _preamble(choice: Mapping[str, Any]) -> bool:
    """Whether a chat choice is the role-only delta servers send before any token.

    >>> _preamble({"delta": {"role": "assistant", "content": ""}}), _preamble({"delta": {}})
    (True, False)
    """
    delta = choice.get("delta") or {}
    return "role" in delta and not delta.get("content") and not choice.get("finish_reason")


def env_proxy(base_url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy the environment names for ``base_url`` (``HTTP(S)_PROXY``, ``ALL_PROXY``,
    less ``NO_PROXY``, lower case first, as httpx and curl read them), or None.

    >>> env_proxy("http://10.0.0.5:8000/v1", {"HTTP_PROXY": "http://proxy:3128"})
    'http://proxy:3128'
    >>> env_proxy("http://127.0.0.1:8000/v1", {"http_proxy": "http://p:1", "no_proxy": "127.0.0.1"})
    >>> env_proxy("https://api.example.com/v1", {"http_proxy": "http://p:1"})
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str:
        return env.get(name) or env.get(name.upper()) or ""

    parts = urlsplit(base_url)
    proxy = get(f"{parts.scheme.lower()}_proxy") or get("all_proxy")
    host = parts.hostname or ""
    try:
        # With the port too, so that a NO_PROXY entry "host:port" matches (urllib tries both).
        host_port = f"{host}:{parts.port}" if parts.port is not None else host
    except ValueError:
        host_port = host
    if not proxy or proxy_bypass_environment(host_port, {"no": get("no_proxy")}):
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"  # "proxy:3128" means http, as httpx and curl read it
    if urlsplit(proxy).scheme.lower() not in ("http", "https"):
        raise EndpointError(
            f"the environment names the proxy {redact(proxy)!r} for {base_url}; the client "
            "speaks to http:// proxies only: unset it or add the host to NO_PROXY",
            kind="config",
        )
    return proxy


def redact(url: str) -> str:
    """``url`` without the password of its user part (a proxy URL may carry one).

    >>> redact("http://user:s3cret@proxy:3128")
    'http://user:***@proxy:3128'
    >>> redact("http://proxy:3128")
    'http://proxy:3128'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}").geturl()


def _unreachable(what: str, exc: aiohttp.ClientConnectorError, proxy: str | None) -> EndpointError:
    """A connect failure in words that say which host failed: the proxy, a name, or the server."""
    why = exc or type(exc).__name__
    if isinstance(exc, aiohttp.ClientProxyConnectionError) and proxy is not None:
        return EndpointError(
            f"{what}: cannot reach the proxy {redact(proxy)} the environment names ({why}); "
            "fix HTTP_PROXY/HTTPS_PROXY or add the host to NO_PROXY",
            "connect",
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return EndpointError(f"{what}: the host name does not resolve ({why})", "connect")
    return EndpointError(f"{what}: nothing listening there ({why})", "connect")


# How a request asks for exactly ``max_tokens`` tokens, tried in this order, each way the field
# it sends. ``ignore_eos``: vLLM and SGLang (vLLM's extension, which other servers copied).
# ``generation_config``: transformers serve, which refuses ``ignore_eos`` (HTTP 422
# "Unexpected fields") but takes a JSON string of generation settings over its model's
# (``cli/serving/utils.py``, ``_build_generation_kwargs``, transformers 5.x): ``min_new_tokens``
# masks the end-of-sequence tokens until ``max_tokens`` are made, so the model goes on with
# text. Not ``eos_token_id: -1``, which lets the model emit EOS after EOS: each a token the
# server counts but streams no event for (measured: usage 8, one event, no text), which no
# count check can tell from a lie. Its continuous batching (``--continuous-batching``, off by
# default) takes no ``min_new_tokens``: a short answer there fails, naming finish_reason.
EXACT_WAYS: dict[str, str] = {"ignore_eos": "ignore_eos", "generation_config": "generation_config"}


def exact_value(way: str, max_tokens: int) -> Any:
    """What ``way`` sends in its field for an answer of exactly ``max_tokens`` tokens.

    >>> exact_value("ignore_eos", 8), exact_value("generation_config", 8)
    (True, '{"min_new_tokens": 8}')
    """
    if way == "generation_config":
        return json.dumps({"min_new_tokens": max_tokens})
    return True


def exact_words(way: str | None) -> str:
    """How a message names the way an exact count was asked.

    >>> exact_words("generation_config")
    'generation_config {"min_new_tokens": max_tokens}'
    >>> exact_words(None)
    'nothing: the server refused every way of asking'
    """
    if way is None:
        return "nothing: the server refused every way of asking"
    value = exact_value(way, 0)
    return way if value is True else f"{way} {value.replace('0', 'max_tokens')}"


# A GET answer (models, version, metrics; vLLM's /metrics is ~100 KB) larger than this is not one.
MAX_GET_BYTES = 16 * 2**20


def _too_big(url: str, how: str) -> EndpointError:
    return EndpointError(
        f"GET {url}: the answer {how} past {MAX_GET_BYTES // 2**20} MiB; not read further "
        "(is this the server's own URL?)",
        "malformed",
    )


def _bad_url(url: str, exc: Exception) -> EndpointError:
    return EndpointError(
        f"{url}: not a URL the client can send to ({exc or type(exc).__name__}); the endpoint "
        "must look like http://HOST:PORT/v1",
        "config",
    )


class OpenAIClient:
    """An async client for one OpenAI-compatible endpoint (``base_url`` ends in ``/v1``).

    ``stall_s`` bounds the wait for the next byte of a stream; ``GenRequest.timeout_s`` bounds
    a whole request. Use as ``async with OpenAIClient(url) as client: ...``. One connection
    pool serves every request of the client (the session is made on first use, inside the
    event loop that runs the requests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = None,
        connect_timeout_s: float = 5.0,
        stall_s: float = 60.0,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.root = server_root(self.base_url)
        try:
            parts = urlsplit(self.base_url)
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError as exc:
            raise _bad_url(self.base_url, exc) from None
        if parts.username is not None:
            # Every message names the URL (reports, JUnit, CI logs): a password would be in all,
            # and aiohttp refuses URL credentials next to the key's Authorization header.
            raise EndpointError(
                f"the endpoint {redact(self.base_url)} carries credentials; take them out of "
                "the URL and name the variable holding the server's key with api_key_env",
                "config",
            )
        key = api_key_from_env(api_key_env)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.stall_s = stall_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=stall_s
        )
        # A GET (models, health, metrics) is small: it gets stall_s in all, not per read, so a
        # server that trickles bytes cannot hold the start of a suite without end.
        self._get_timeout = aiohttp.ClientTimeout(
            total=stall_s, sock_connect=connect_timeout_s, sock_read=stall_s
        )
        self._max_connections = max_connections
        self._proxy = env_proxy(self.base_url)
        self._session: aiohttp.ClientSession | None = None
        # The ways of asking for an exact count (``EXACT_WAYS``) the server refused by name:
        # later requests of this client ask the next way.
        self.refused: set[str] = set()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=_StampingConnector(limit=self._max_connections),
                # No cookies to keep between requests of a benchmark.
                cookie_jar=aiohttp.DummyCookieJar(),
                # Not trust_env: it looks up .netrc and the proxy variables in a thread on
                # every request (latency in every TTFT); ``env_proxy`` reads them once.
                trace_configs=[_SENT],
            )
        return self._session

    async def __aenter__(self) -> OpenAIClient:
        self._http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def ignore_eos_rejected(self) -> bool:
        """Whether the server refused the ``ignore_eos`` field (then another way is asked)."""
        return "ignore_eos" in self.refused

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- plain GETs -------------------------------------------------------------------------

    async def _get(self, url: str) -> tuple[int, str]:
        """Status and body text of ``GET url``; no answer or nothing listening is an error, and
        so is a body past ``MAX_GET_BYTES`` (read no further: a server's answer is not memory)."""
        try:
            async with self._http().get(
                url, proxy=self._proxy, allow_redirects=False, timeout=self._get_timeout
            ) as response:
                declared = response.content_length
                if declared is not None and declared > MAX_GET_BYTES:
                    raise _too_big(url, f"declares {declared:,} bytes")
                pieces: list[bytes] = []
                size = 0
                async for piece in response.content.iter_chunked(2**16):
                    size += len(piece)
                    if size > MAX_GET_BYTES:
                        raise _too_big(url, "goes on")
                    pieces.append(piece)
                return response.status, b"".join(pieces).decode("utf-8", "replace")
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise EndpointError(
                f"GET {url}: no whole answer within {self.stall_s:g} s ({type(exc).__name__})",
                "timeout",
            ) from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise _bad_url(url, exc) from exc
        except aiohttp.ClientConnectorError as exc:
            raise _unreachable(f"GET {url}", exc, self._proxy) from exc
        except aiohttp.ClientError as exc:
            raise EndpointError(
                f"GET {url}: no HTTP answer ({exc or type(exc).__name__})", "connect"
            ) from exc

    async def get_json(self, url: str) -> Any | None:
        """The JSON at ``url``, or None when it is missing or not JSON (best-effort probes)."""
        status, body = await self._get(url)
        if status != 200:
            return None
        try:
            return loads_json(body)
        except ValueError:
            return None

    async def list_models(self) -> tuple[ServedModel, ...]:
        """``GET /v1/models``: the models the server serves."""
        url = f"{self.base_url}/models"
        status, body = await self._get(url)
        self._raise_for_status(status, url, body)
        try:
            entries = loads_json(body)["data"]
            return tuple(
                ServedModel(
                    id=str(e["id"]),
                    owned_by=None if e.get("owned_by") is None else str(e["owned_by"]),
                    max_model_len=(
                        None
                        if e.get("max_model_len") is None
                        else bounded_count(e["max_model_len"], "max_model_len", least=1)
                    ),
                )
                for e in entries
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EndpointError(
                f"GET {url}: not an OpenAI model list ({exc}): {body[:200]!r}", "malformed"
            ) from exc

    async def metrics_text(self) -> str | None:
        """The Prometheus text at ``/metrics``, or None where the server has none."""
        status, body = await self._get(f"{self.root}/metrics")
        return body if status == 200 else None

    async def engine_facts(self) -> EngineFacts:
        """Engine and version as the server tells them (best effort; see ``facts.engine_from``)."""
        answers: dict[str, Any] = {}
        for path in ENGINE_PROBES:
            try:
                answers[path] = await self.get_json(f"{self.root}{path}")
            except EndpointError:
                answers[path] = None
        try:
            owners = tuple(m.owned_by or "" for m in await self.list_models())
        except EndpointError:
            owners = ()
        return engine_from(answers, owners)

    # --- streaming --------------------------------------------------------------------------

    def _raise_for_status(
        self,
        status: int,
        url: str,
        body: str,
        model: str | None = None,
        location: str | None = None,
    ) -> None:
        if status == 200:
            return
        if 300 <= status < 400:
            # Following it would measure (and send the key to) a server the suite does not name.
            raise EndpointError(
                f"{url}: HTTP {status} redirect{f' to {location}' if location else ''}; the client "
                "does not follow redirects: set the endpoint to the server's own /v1 URL",
                "status",
                status,
            )
        said = error_message(body)
        if status in (401, 403):
            raise EndpointError(
                f"{url}: HTTP {status} unauthorized ({said}); set api_key_env to the name of the "
                "variable holding the server's key",
                "auth",
                status,
            )
        named = "model" in said.lower() or (model is not None and model in said)
        if status in (400, 404) and named:
            raise EndpointError(
                f"{url}: HTTP {status} for model {model!r}: {said}; "
                "check served_model against GET /v1/models",
                "model",
                status,
            )
        raise EndpointError(f"{url}: HTTP {status}: {said}", "status", status)

    def _body(self, request: GenRequest, exact: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.chat:
            body["messages"] = [{"role": "user", "content": request.prompt}]
            if request.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = request.logprobs
        else:
            body["prompt"] = request.prompt
            if request.logprobs is not None:
                body["logprobs"] = request.logprobs
        if exact is not None:
            body[EXACT_WAYS[exact]] = exact_value(exact, request.max_tokens)
        body.update(request.extra)
        return body

    async def stream(self, request: GenRequest) -> StreamResult:
        """Send one streamed request and measure it; every fault is an ``EndpointError``."""
        ways = [w for w in EXACT_WAYS if w not in self.refused] if request.ignore_eos else []
        while True:
            exact = ways[0] if ways else None
            try:
                result = await self._bounded(request, exact)
                break
            except EndpointError as exc:
                named = exact is not None and EXACT_WAYS[exact] in str(exc)
                if exact is None or not (exc.status in (400, 422) and named):
                    raise
                # The server does not know this way of asking: the next one, and not it again.
                self.refused.add(exact)
                ways.pop(0)
        return self._check_count(request, result)

    async def count_prompt_tokens(
        self, model: str, prompt: str, *, chat: bool = False, timeout_s: float = 120.0
    ) -> int:
        """How many tokens the server counts in ``prompt`` (``usage.prompt_tokens``).

        One token is generated and none is needed: with byte-level BPE that one token may be
        part of a character, which the server holds back and never streams.
        """
        request = GenRequest(
            model, prompt, max_tokens=1, chat=chat, timeout_s=timeout_s, need_content=False
        )
        result = await self._bounded(request, None)
        if result.prompt_tokens is None:
            raise EndpointError(
                f"{self.base_url}: the server reported no usage.prompt_tokens, so a prompt of a "
                "given token length cannot be checked",
                "short",
            )
        return result.prompt_tokens

    async def _bounded(self, request: GenRequest, exact: str | None) -> StreamResult:
        try:
            return await asyncio.wait_for(self._stream(request, exact), request.timeout_s)
        except asyncio.TimeoutError as exc:
            raise EndpointError(
                f"request to {self.base_url} took longer than its {request.timeout_s:g} s limit",
                "timeout",
            ) from exc

    def _check_count(self, request: GenRequest, result: StreamResult) -> StreamResult:
        if not request.require_max_tokens:
            return result
        if result.completion_tokens is None:
            raise EndpointError(
                f"{self.base_url}: the server reported no usage, so the {request.max_tokens} "
                "tokens asked for cannot be confirmed (stream_options.include_usage unsupported?)",
                "short",
            )
        if result.completion_tokens < request.max_tokens:
            why = (
                f"it ignores ignore_eos (asked with {exact_words(result.exact_by)})"
                if request.ignore_eos
                else "stopped early"
            )
            raise EndpointError(
                f"{self.base_url}: server produced {result.completion_tokens} of "
                f"{request.max_tokens} tokens (finish_reason {result.finish_reason!r}); {why}",
                "short",
            )
        return result

    async def _stream(self, request: GenRequest, exact: str | None) -> StreamResult:
        path = "/chat/completions" if request.chat else "/completions"
        url = f"{self.base_url}{path}"
        body = self._body(request, exact)
        # Serialized before the clock starts: building the request is not sending it.
        payload = json.dumps(body).encode()
        stream = _Stream(url, request)
        decoder = SSEDecoder()
        stream.sent_at = time.perf_counter()  # until the connection says when it sent it
        try:
            async with self._http().post(
                url,
                data=payload,
                headers=_JSON,
                proxy=self._proxy,
                allow_redirects=False,
                trace_request_ctx=stream,
            ) as response:
                if response.status != 200:
                    try:
                        raw = (await response.read()).decode("utf-8", "replace")
                    except aiohttp.ClientError as exc:
                        raw = f"(body unreadable: {type(exc).__name__})"
                    self._raise_for_status(
                        response.status,
                        url,
                        raw,
                        request.model,
                        response.headers.get("Location"),
                    )
                kind = response.headers.get("Content-Type", "")
                if kind.partition(";")[0].strip().lower() != "text/event-stream":
                    raise EndpointError(
                        f"{url}: not an event stream: the server answered with Content-Type "
                        f"{kind or 'none'!r}, not 'text/event-stream'",
                        "malformed",
                    )
                connection = response.connection
                protocol = connection.protocol if connection is not None else None
                async for piece in response.content.iter_any():
                    # When these bytes came off the socket (every event in them had arrived
                    # by then), not when this task got to them: with other streams' chunks in
                    # the same loop turn, that was up to a millisecond later.
                    now = time.perf_counter()
                    now = min(now, getattr(protocol, "read_at", 0.0) or now)
                    if not stream.done:
                        stream.read(decoder.feed(piece), now)
                    else:
                        decoder.feed(piece)  # read to the end, so the connection can be reused
        except SSEError as exc:
            raise EndpointError(f"{url}: not an event stream: {exc}", "malformed") from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise _bad_url(url, exc) from exc
        except aiohttp.ClientConnectorError as exc:
            raise _unreachable(url, exc, self._proxy) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise EndpointError(
                f"{url}: nothing answered the connection ({exc or type(exc).__name__})", "connect"
            ) from exc
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise EndpointError(
                f"{url}: the stream stalled: no data for {self.stall_s:g} s ({type(exc).__name__})",
                "timeout",
            ) from exc
        except aiohttp.ClientError as exc:
            raise EndpointError(
                f"{url}: the connection failed after {stream.chunks} chunks "
                f"({type(exc).__name__}: {exc}); dropped mid-stream?",
                "dropped",
            ) from exc
        # ``extra`` may raise the cap under the newer name (vLLM takes max_completion_tokens
        # over max_tokens): judge against the larger of the two given.
        caps = [body.get(k) for k in ("max_tokens", "max_completion_tokens")]
        cap = max((c for c in caps if type(c) is int), default=None)
        return stream.result(cap, exact)


_JSON = {"Content-Type": "application/json"}


class _StampedHandler(ResponseHandler):
    """aiohttp's response protocol, noting when bytes last came off the socket."""

    read_at = 0.0

    def data_received(self, data: bytes) -> None:
        self.read_at = time.perf_counter()
        super().data_received(data)


class _StampingConnector(aiohttp.TCPConnector):
    """A connector whose connections say when their bytes arrived (``_StampedHandler``).

    aiohttp has no public hook for the arrival of response bytes; the connector's protocol
    factory is its own. Where a release names it otherwise, the stamps fall back to the
    moment the reading task runs.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(getattr(self, "_factory", None), functools.partial):
            stamped = functools.partial(_StampedHandler, loop=self._loop)
            self._factory = cast("functools.partial[ResponseHandler]", stamped)


async def _headers_sent(
    session: aiohttp.ClientSession,
    context: Any,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    """The instant a request goes out (its connection is ready and its headers handed to it):
    TTFT and E2E run from here, not from before the client built the request and took a
    connection from its pool (~0.2 ms of its own time on the dev machine)."""
    stream = context.trace_request_ctx
    if isinstance(stream, _Stream):
        stream.sent_at = time.perf_counter()


_SENT = aiohttp.TraceConfig()
_SENT.on_request_headers_sent.append(_headers_sent)
_SENT.freeze()


class _Stream:
    """The state of one stream being read: what arrived, when, and what the server said."""

    __slots__ = (
        "bytes",
        "chat",
        "chunks",
        "done",
        "events",
        "finish",
        "first_at",
        "first_event_at",
        "itl",
        "last",
        "last_event",
        "last_read",
        "logprobs",
        "model",
        "need_content",
        "paced",
        "reads",
        "saw_logprobs",
        "sent_at",
        "text",
        "token_ids",
        "url",
        "usage",
    )

    def __init__(self, url: str, request: GenRequest) -> None:
        self.url = url
        self.model = request.model
        self.chat = request.chat
        self.paced = request.ignore_eos if request.paced is None else request.paced
        self.need_content = request.need_content
        self.text: list[str] = []
        self.itl: list[float] = []
        self.logprobs: list[TokenLogprob] = []
        self.saw_logprobs = False
        self.token_ids: int | None = None
        self.usage: Mapping[str, int | None] | None = None
        self.finish: str | None = None
        self.sent_at = 0.0
        self.first_at = 0.0
        self.first_event_at = 0.0
        self.last = 0.0
        self.last_event = 0.0
        self.last_read = float("-inf")
        self.chunks = 0
        self.events = 0
        self.reads = 0
        self.bytes = 0
        self.done = False

    def read(self, events: list[SSEvent], now: float) -> None:
        """The events one socket read completed, all stamped with that read's instant."""
        carried = False
        for event in events:
            if self.done:
                return
            if event.data.strip() == "[DONE]":
                self.done = True
                continue
            self.last_event = now
            carried = self._event(event, now) or carried
        if carried:
            if now - self.last_read > DISTINCT_READ_S:
                self.reads += 1
            self.last_read = now

    def _event(self, event: SSEvent, now: float) -> bool:
        url = self.url
        if event.event == "error":
            raise EndpointError(
                f"{url}: error event in the stream: {error_message(event.data)}", "stream-error"
            )
        try:
            data = loads_json(event.data)
        except ValueError as exc:
            raise EndpointError(
                f"{url}: malformed event in the stream (not JSON): {event.data[:200]!r}",
                "malformed",
            ) from exc
        problem = stream_error(data) if isinstance(data, dict) else None
        if problem is not None:
            raise EndpointError(
                f"{url}: the server reported an error inside its 200 stream: {problem}",
                "stream-error",
            )
        try:
            said = data.get("model")
            if said is not None and said != self.model:
                raise EndpointError(
                    f"{url}: the server answered as model {said!r} to a request for "
                    f"{self.model!r} (a proxy that rewrites it, or a server that is not the one "
                    "asked for; vLLM with several --served-model-name answers with the first: "
                    "name that one in served_model)",
                    "model",
                )
            if data.get("usage"):
                self.usage = _usage_of(data["usage"])
            choices = data.get("choices") or []
            for choice in choices:
                if choice.get("index", 0) != 0:
                    # One completion was asked for (n=1): a second one is padding, not output.
                    raise EndpointError(
                        f"{url}: the stream carries a choice with index {choice.get('index')!r}; "
                        "one completion was asked for (index 0)",
                        "malformed",
                    )
                self.events += 1
                if not self.first_event_at and not (self.chat and _preamble(choice)):
                    self.first_event_at = now  # the first token, text or not
                if choice.get("finish_reason"):
                    self.finish = str(choice["finish_reason"])
                if choice.get("logprobs"):
                    self.saw_logprobs = True
                    self.logprobs.extend(_logprobs_of(choice, self.chat))
                ids = choice.get("token_ids")
                if ids is not None:
                    self.token_ids = (self.token_ids or 0) + len(ids)
                content = _content_of(choice, self.chat)
                if not content:
                    continue
                if self.finish is not None and not choice.get("finish_reason"):
                    raise EndpointError(
                        f"{url}: text after the finish_reason {self.finish!r}: {content[:80]!r}",
                        "malformed",
                    )
                if self.chunks == 0:
                    self.first_at = now
                else:
                    self.itl.append(now - self.last)
                self.last = now
                self.chunks += 1
                self.bytes += len(content) if content.isascii() else len(content.encode())
                self.text.append(content)
            return bool(choices)
        except (AttributeError, TypeError, KeyError, ValueError, OverflowError) as exc:
            raise EndpointError(
                f"{url}: malformed event in the stream "
                f"({type(exc).__name__}: {exc}): {event.data[:200]!r}",
                "malformed",
            ) from exc

    def result(self, cap: int | None, exact: str | None) -> StreamResult:
        """The measurement, once what the server said agrees with what arrived."""
        url, finish, chunks, start = self.url, self.finish, self.chunks, self.sent_at
        if finish is None:
            # [DONE] alone does not say the generation finished: llama.cpp sends it after an
            # error too. Every OpenAI-compatible server names a finish_reason when it ends.
            ended = "with [DONE] but" if self.done else "without [DONE] and"
            raise EndpointError(
                f"{url}: the stream ended after {chunks} chunks {ended} without a finish_reason",
                "dropped",
            )
        if finish in ABORTED:
            raise EndpointError(
                f"{url}: the server ended the generation with finish_reason {finish!r} after "
                f"{chunks} chunks (it aborted the request)",
                "stream-error",
            )
        said = self.usage.get("completion_tokens") if self.usage else None
        if said is not None and cap is not None and said > cap:
            # Every token figure (throughput, TPOT) divides by this count: one above the cap
            # the server was given is a count that cannot be true.
            raise EndpointError(
                f"{url}: the server reported {said} completion tokens for a request capped at "
                f"max_tokens {cap}; its usage cannot be trusted",
                "malformed",
            )
        logprobs = tuple(self.logprobs) if self.saw_logprobs and self.logprobs else None
        got = Received(
            content_chunks=chunks,
            events=self.events,
            content_bytes=self.bytes,
            logprob_tokens=len(logprobs) if logprobs is not None else None,
            token_ids=self.token_ids,
        )
        text = "".join(self.text)
        wrong = count_disagreement(said, got, cap, finish)
        if wrong is None and logprobs is not None:
            wrong = logprob_text_disagreement([lp.token for lp in logprobs], text)
        if wrong is not None:
            raise EndpointError(f"{url}: {wrong}; the server's word cannot be taken", "malformed")
        if chunks == 0 and self.need_content:
            raise EndpointError(
                f"{url}: the stream carried no content (usage.completion_tokens: {said})", "short"
            )
        tokens = said if said is not None else chunks
        buffered = buffering(self.events, self.reads, tokens)
        if buffered is not None and self.paced and max(self.events, tokens) >= REFUSE_BUFFERED_FROM:
            raise EndpointError(
                f"{url}: {buffered}; a decode rate, ITL or TPOT needs the tokens as they were "
                "made (TTFT and E2E alone are measured with paced=False)",
                "buffered",
            )
        return StreamResult(
            # No text at all (an answer that is one EOS): its first token's event, if any.
            ttft_s=(self.first_at if chunks else self.first_event_at or self.last_event) - start,
            itl_s=tuple(self.itl) if buffered is None else (),
            e2e_s=max(self.last_event, start) - start,
            text=text,
            content_chunks=chunks,
            prompt_tokens=self.usage.get("prompt_tokens") if self.usage else None,
            completion_tokens=said,
            finish_reason=finish,
            ignore_eos_applied=exact is not None,
            logprobs=logprobs,
            first_token_at=self.first_at,
            events=self.events,
            reads=self.reads,
            content_bytes=self.bytes,
            buffered=buffered,
            exact_by=exact,
        )
