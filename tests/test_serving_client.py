"""The streaming client against a local fake server: timings, usage, and each fault as one error."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving_fakes import MODEL, FakeOpenAI

from pytest_gpufit.serving.client import (
    GenRequest,
    OpenAIClient,
    SSEDecoder,
    SSEError,
    SSEvent,
    StreamResult,
    env_proxy,
)
from pytest_gpufit.serving.errors import EndpointError
from pytest_gpufit.serving.server import free_port


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def stream(url: str, request: GenRequest, **client: Any) -> StreamResult:
    async def go() -> StreamResult:
        async with OpenAIClient(url, **client) as c:
            return await c.stream(request)

    return asyncio.run(go())


def fails(url: str, request: GenRequest, **client: Any) -> EndpointError:
    with pytest.raises(EndpointError) as info:
        stream(url, request, **client)
    return info.value


def test_stream_measures_ttft_itl_e2e_and_usage(fake: FakeOpenAI) -> None:
    fake.delay_s = 0.01
    r = stream(fake.base_url, GenRequest(MODEL, "a b c", max_tokens=5))
    assert r.completion_tokens == 5 and r.prompt_tokens == 4
    assert r.content_chunks == 5 and len(r.itl_s) == 4
    assert r.text == " t0 t1 t2 t3 t4"
    assert 0.01 <= r.ttft_s < r.e2e_s
    # The server paces chunks 10 ms apart; a loaded client may read two at once, so judge the
    # gaps together: stamps taken at the end (or not at all) would sum to about zero.
    assert all(gap >= 0 for gap in r.itl_s) and sum(r.itl_s) >= 0.035
    assert r.ttft_s + sum(r.itl_s) <= r.e2e_s
    assert r.finish_reason == "length" and r.logprobs is None
    assert r.tpot_s is not None and r.tpot_s > 0.005


def test_streams_are_read_to_the_end_so_connections_are_reused(fake: FakeOpenAI) -> None:
    """Leaving at [DONE] before the final zero chunk made httpx close every connection."""
    fake.keep_alive = True

    async def go() -> list[StreamResult]:
        async with OpenAIClient(fake.base_url) as c:
            return [await c.stream(GenRequest(MODEL, "a", max_tokens=2)) for _ in range(3)]

    assert [r.completion_tokens for r in asyncio.run(go())] == [2, 2, 2]
    assert fake.connections == 1


def test_chat_stream_reads_deltas(fake: FakeOpenAI) -> None:
    r = stream(fake.base_url, GenRequest(MODEL, "hi", max_tokens=3, chat=True))
    assert r.text == " t0 t1 t2" and r.completion_tokens == 3
    assert fake.bodies[-1]["messages"] == [{"role": "user", "content": "hi"}]
    assert fake.bodies[-1]["stream_options"] == {"include_usage": True}


def test_logprobs_returned_when_the_server_gives_them(fake: FakeOpenAI) -> None:
    r = stream(fake.base_url, GenRequest(MODEL, "a", max_tokens=2, logprobs=2))
    assert fake.bodies[-1]["logprobs"] == 2
    assert r.logprobs is not None and len(r.logprobs) == 2
    assert r.logprobs[0].token == " t0" and r.logprobs[0].logprob == -0.1
    assert dict(r.logprobs[0].top)[" x"] == -2.5


def test_nothing_listening_is_one_connect_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    err = fails(url, GenRequest(MODEL, "a"))
    assert err.kind == "connect" and "nothing listening" in str(err) and url in str(err)


def test_wrong_model_names_the_model_and_the_fix(fake: FakeOpenAI) -> None:
    err = fails(fake.base_url, GenRequest("wrong/model", "a"))
    assert err.kind == "model" and err.status == 404
    assert "does not exist" in str(err) and "/v1/models" in str(err)


def test_401_says_how_to_pass_a_key(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.mode = "auth"
    err = fails(fake.base_url, GenRequest(MODEL, "a"))
    assert err.kind == "auth" and err.status == 401 and "api_key_env" in str(err)
    monkeypatch.setenv("GPUFIT_TEST_KEY", "sk-test")
    r = stream(fake.base_url, GenRequest(MODEL, "a", max_tokens=2), api_key_env="GPUFIT_TEST_KEY")
    assert r.completion_tokens == 2


def test_api_key_env_unset_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUFIT_NO_SUCH_KEY", raising=False)
    with pytest.raises(EndpointError, match="GPUFIT_NO_SUCH_KEY.*not set"):
        OpenAIClient("http://127.0.0.1:1/v1", api_key_env="GPUFIT_NO_SUCH_KEY")


def test_500_is_a_status_error(fake: FakeOpenAI) -> None:
    fake.mode = "500"
    err = fails(fake.base_url, GenRequest(MODEL, "a"))
    assert err.kind == "status" and err.status == 500 and "Internal Server Error" in str(err)


def test_error_event_inside_a_200_stream_fails_not_zero_tokens(fake: FakeOpenAI) -> None:
    fake.mode = "error_event"
    err = fails(fake.base_url, GenRequest(MODEL, "a"))
    assert err.kind == "stream-error"
    assert "Unsupported CPU attention configuration" in str(err)


def test_malformed_event_is_one_error(fake: FakeOpenAI) -> None:
    fake.mode = "malformed"
    err = fails(fake.base_url, GenRequest(MODEL, "a"))
    assert err.kind == "malformed" and "not JSON" in str(err)


@pytest.mark.parametrize("mode", ["bad_shape", "not_object"])
def test_json_of_the_wrong_shape_is_malformed(fake: FakeOpenAI, mode: str) -> None:
    fake.mode = mode
    err = fails(fake.base_url, GenRequest(MODEL, "a"))
    assert err.kind == "malformed" and "malformed event" in str(err)


def test_a_json_answer_to_a_stream_request_is_malformed(fake: FakeOpenAI) -> None:
    fake.mode = "not_sse"
    err = fails(fake.base_url, GenRequest(MODEL, "a"))
    assert err.kind == "malformed" and "not an event stream" in str(err)


def test_connection_dropped_mid_stream(fake: FakeOpenAI) -> None:
    fake.mode = "drop"
    err = fails(fake.base_url, GenRequest(MODEL, "a", max_tokens=8))
    assert err.kind == "dropped" and "mid-stream" in str(err)


def test_stream_ending_without_finish_is_dropped(fake: FakeOpenAI) -> None:
    fake.mode = "no_finish"
    err = fails(fake.base_url, GenRequest(MODEL, "a", max_tokens=3))
    assert err.kind == "dropped" and "without a finish_reason" in str(err)


def test_stalled_stream_times_out_within_its_limit(fake: FakeOpenAI) -> None:
    fake.mode = "stall"
    start = time.monotonic()
    err = fails(fake.base_url, GenRequest(MODEL, "a", max_tokens=8), stall_s=0.5)
    assert err.kind == "timeout" and "stalled" in str(err)
    assert time.monotonic() - start < 5


def test_whole_request_limit(fake: FakeOpenAI) -> None:
    fake.delay_s = 0.2
    start = time.monotonic()
    err = fails(fake.base_url, GenRequest(MODEL, "a", max_tokens=50, timeout_s=0.5))
    assert err.kind == "timeout" and "0.5 s limit" in str(err)
    assert time.monotonic() - start < 5


def test_short_count_is_an_error_when_the_full_count_is_required(fake: FakeOpenAI) -> None:
    fake.mode = "short"
    req = GenRequest(MODEL, "a", max_tokens=128, ignore_eos=True, require_max_tokens=True)
    err = fails(fake.base_url, req)
    assert err.kind == "short" and "server produced 10 of 128 tokens" in str(err)
    # Without the requirement the short count is a result, not an error.
    r = stream(fake.base_url, GenRequest(MODEL, "a", max_tokens=128))
    assert r.completion_tokens == 10 and r.finish_reason == "stop"


def test_missing_usage_cannot_confirm_a_required_count(fake: FakeOpenAI) -> None:
    fake.mode = "no_usage"
    req = GenRequest(MODEL, "a", max_tokens=4, require_max_tokens=True)
    err = fails(fake.base_url, req)
    assert err.kind == "short" and "no usage" in str(err)
    assert stream(fake.base_url, GenRequest(MODEL, "a", max_tokens=4)).completion_tokens is None


def test_ignore_eos_rejected_once_then_left_out(fake: FakeOpenAI) -> None:
    fake.mode = "reject_ignore_eos"
    req = GenRequest(MODEL, "a", max_tokens=4, ignore_eos=True, require_max_tokens=True)

    async def go() -> tuple[StreamResult, StreamResult, bool]:
        async with OpenAIClient(fake.base_url) as c:
            return await c.stream(req), await c.stream(req), c.ignore_eos_rejected

    first, second, rejected = asyncio.run(go())
    # Asked the next way (transformers serve's generation_config), not without any.
    assert rejected and first.exact_by == "generation_config" and first.completion_tokens == 4
    assert ["ignore_eos" in b for b in fake.bodies] == [True, False, False]
    assert [json.loads(b.get("generation_config", "{}")) for b in fake.bodies[1:]] == [
        {"min_new_tokens": 4}
    ] * 2


def test_a_server_refusing_every_way_of_asking_is_asked_with_none(fake: FakeOpenAI) -> None:
    fake.mode = "reject_both"
    fake.tokens = 3
    req = GenRequest(MODEL, "a", max_tokens=8, ignore_eos=True)

    async def go() -> tuple[StreamResult, StreamResult]:
        async with OpenAIClient(fake.base_url) as c:
            return await c.stream(req), await c.stream(req)

    first, second = asyncio.run(go())
    assert first.exact_by is None and not first.ignore_eos_applied
    assert first.exact_words == "nothing: the server refused every way of asking"
    asked = [sorted(set(b) & {"ignore_eos", "generation_config"}) for b in fake.bodies]
    assert asked == [["ignore_eos"], ["generation_config"], [], []]


def test_short_count_without_ignore_eos_says_so(fake: FakeOpenAI) -> None:
    fake.mode = "reject_ignore_eos"
    fake.tokens = 3
    req = GenRequest(MODEL, "a", max_tokens=8, ignore_eos=True, require_max_tokens=True)
    err = fails(fake.base_url, req)
    assert "server produced 3 of 8 tokens (finish_reason 'stop')" in str(err)
    said = 'it ignores ignore_eos (asked with generation_config {"min_new_tokens": max_tokens})'
    assert said in str(err)


def test_list_models_metrics_and_engine_facts(fake: FakeOpenAI) -> None:
    async def go() -> tuple[Any, Any, Any]:
        async with OpenAIClient(fake.base_url) as c:
            return await c.list_models(), await c.metrics_text(), await c.engine_facts()

    models, metrics, facts = asyncio.run(go())
    assert [(m.id, m.max_model_len, m.owned_by) for m in models] == [(MODEL, 512, "vllm")]
    assert "vllm:cache_config_info" in metrics
    assert (facts.engine, facts.version, facts.source) == ("vllm", "0.32.0", "/version")


def test_list_models_with_nothing_listening() -> None:
    async def go() -> Any:
        async with OpenAIClient(f"http://127.0.0.1:{free_port()}/v1") as c:
            return await c.list_models()

    with pytest.raises(EndpointError, match="nothing listening"):
        asyncio.run(go())


def test_sized_prompt_is_checked_against_the_server_count(fake: FakeOpenAI) -> None:
    from pytest_gpufit.serving.prompts import sized_prompt

    async def go(tokens: int) -> Any:
        async with OpenAIClient(fake.base_url) as c:
            return await sized_prompt(c, MODEL, tokens)

    prompt = asyncio.run(go(40))  # the fake counts one token per word plus a BOS
    assert prompt.tokens == 40 and len(prompt.text.split()) == 39
    with pytest.raises(EndpointError, match="could not build a prompt of 1 tokens"):
        asyncio.run(go(1))


# --- the event-stream decoder (the transport is aiohttp; SSE framing is decoded here) --------

STREAM = (
    b": keep-alive comment\r\n\r\n"
    b'data: {"choices": [{"text": "a"}]}\r\n\r\n'
    b"event: error\rdata: line one\rdata: line two\r\r"
    b"data:no-space\n\n"
    b"id: 7\nretry: 10\ndata: [DONE]\n\n"
    b"data: trailing without blank line"
)
EVENTS = [
    SSEvent("message", '{"choices": [{"text": "a"}]}'),
    SSEvent("error", "line one\nline two"),
    SSEvent("message", "no-space"),
    SSEvent("message", "[DONE]"),
]


@given(cuts=st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), unique=True))
@settings(max_examples=200, deadline=None)
def test_sse_decoder_gives_the_same_events_however_the_bytes_arrive(cuts: list[int]) -> None:
    """CRLF, CR and LF endings, comments and multi-line data, split at any byte (TCP does)."""
    decoder = SSEDecoder()
    events: list[SSEvent] = []
    edges = [0, *sorted(cuts), len(STREAM)]
    for a, b in itertools.pairwise(edges):
        events += decoder.feed(STREAM[a:b])
    assert events == EVENTS  # the unterminated last event is never dispatched


def test_events_split_across_writes_with_crlf_endings_are_read() -> None:
    """A server that writes CRLF-framed events a few bytes at a time (as proxies do)."""
    body = b"".join(
        b'data: {"choices": [{"index": 0, "text": "'
        + t
        + b'", "finish_reason": '
        + (b'"length"' if t == b"z" else b"null")
        + b"}]}\r\n\r\n"
        for t in (b"x", b"y", b"z")
    )
    body += b'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}\r\n\r\n'
    body += b"data: [DONE]\r\n\r\n"

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                b"Connection: close\r\n\r\n"
            )
            for i in range(0, len(body), 7):
                conn.sendall(body[i : i + 7])
                time.sleep(0.001)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        r = stream(f"http://127.0.0.1:{port}/v1", GenRequest(MODEL, "a", max_tokens=3))
        thread.join(5)
    assert (r.text, r.content_chunks, r.completion_tokens, r.finish_reason) == (
        "xyz",
        3,
        3,
        "length",
    )


def test_sse_decoder_drops_one_leading_bom_and_refuses_an_endless_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb\xbfdata: 1\n\n") == [SSEvent("message", "1")]
    monkeypatch.setattr(SSEDecoder, "MAX_LINE", 64)
    endless = SSEDecoder()
    endless.feed(b"data: " + b"x" * 50)
    with pytest.raises(SSEError, match="over 64 bytes without a line ending"):
        endless.feed(b"x" * 50)


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://127.0.0.1:1/v1"])
def test_an_endpoint_without_http_is_one_config_error(url: str) -> None:
    err = fails(url, GenRequest(MODEL, "a"))
    assert err.kind == "config" and "http://HOST:PORT/v1" in str(err), str(err)

    async def go() -> Any:
        async with OpenAIClient(url) as c:
            return await c.list_models()

    with pytest.raises(EndpointError, match="not a URL the client can send to"):
        asyncio.run(go())


def test_the_proxy_the_environment_names_is_used(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with httpx: HTTP_PROXY applies (the fake answers as the proxy for a host that has no
    address), NO_PROXY exempts a host, and a proxy the client cannot speak is one config error."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", fake.base_url.removesuffix("/v1"))
    r = stream("http://gpufit-no-such-host.invalid/v1", GenRequest(MODEL, "a", max_tokens=2))
    assert r.completion_tokens == 2
    monkeypatch.setenv("NO_PROXY", "gpufit-no-such-host.invalid")
    assert fails("http://gpufit-no-such-host.invalid/v1", GenRequest(MODEL, "a")).kind == "connect"
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1080")
    monkeypatch.delenv("NO_PROXY")
    with pytest.raises(EndpointError, match="http:// proxies only") as info:
        OpenAIClient("http://10.1.2.3:8000/v1")
    assert info.value.kind == "config"


# --- attacks on the aiohttp transport (each failed on the first aiohttp client) ---------------

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
CHUNK_A = b'data: {"choices": [{"text": "a", "finish_reason": null}]}\n\n'
CHUNK_B = b'data: {"choices": [{"text": "b", "finish_reason": "length"}]}\n\n'


def read_request(conn: socket.socket) -> None:
    """Read one whole request: closing with its body unread would reset the connection (RST),
    and the client could see 'dropped' before the answer (a flaky test, not a client bug)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            return
        body += piece


@contextlib.contextmanager
def answering(answer: bytes) -> Iterator[str]:
    """A socket that answers every request with ``answer`` and closes; yields its /v1 URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)  # accept() wakes to see the stop flag (close() would not wake it)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with conn:
                read_request(conn)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(
    ("usage", "said"),
    [
        (b'"prompt_tokens"', "usage is 'prompt_tokens', not an object"),
        (b'{"completion_tokens": "abc"}', "usage.completion_tokens is 'abc'"),
        (b'{"completion_tokens": -3}', "usage.completion_tokens is -3"),
        (b'{"completion_tokens": NaN}', "usage.completion_tokens is nan"),
        (b'{"completion_tokens": 1e999}', "usage.completion_tokens is inf"),
        (b'{"completion_tokens": 2.5}', "usage.completion_tokens is 2.5"),
    ],
)
def test_a_usage_that_is_not_a_count_is_one_malformed_error(usage: bytes, said: str) -> None:
    """Was a raw TypeError/ValueError/OverflowError (or a negative count taken as measured)."""
    event = b'data: {"choices": [], "usage": ' + usage + b"}\n\n"
    with answering(SSE_HEAD + CHUNK_A + CHUNK_B + event + b"data: [DONE]\n\n") as url:
        err = fails(url, GenRequest(MODEL, "a", max_tokens=2, timeout_s=5))
    assert err.kind == "malformed" and said in str(err), str(err)


def test_a_null_count_in_usage_is_no_count() -> None:
    """Was a TypeError (int(None)); a null count is an unreported one, as a missing key."""
    event = b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": null}}\n\n'
    with answering(SSE_HEAD + CHUNK_A + CHUNK_B + event + b"data: [DONE]\n\n") as url:
        r = stream(url, GenRequest(MODEL, "a", max_tokens=2, timeout_s=5))
        err = fails(url, GenRequest(MODEL, "a", max_tokens=2, require_max_tokens=True))
    assert (r.prompt_tokens, r.completion_tokens) == (1, None)
    assert err.kind == "short" and "reported no usage" in str(err)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_not_followed(status: int) -> None:
    """A 302 on POST was followed as a GET to wherever Location said (a server the suite does
    not name, with the key), and a 307 loop ended as a 'dropped' ClientOSError."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)  # listens, so a followed redirect would connect here and stall
        elsewhere = f"http://127.0.0.1:{other.getsockname()[1]}/v1/completions"
        answer = (
            f"HTTP/1.1 {status} Moved\r\nLocation: {elsewhere}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        with answering(answer) as url:
            err = fails(url, GenRequest(MODEL, "a", timeout_s=5), stall_s=2)
    assert err.kind == "status" and err.status == status, str(err)
    assert f"redirect to {elsewhere}" in str(err) and "does not follow redirects" in str(err)


def test_an_error_status_with_an_unreadable_body_is_still_that_status() -> None:
    """Was 'dropped mid-stream' (the broken gzip body of a 500 hid the 500)."""
    answer = b"HTTP/1.1 500 Oops\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nxxxxx"
    with answering(answer) as url:
        err = fails(url, GenRequest(MODEL, "a", timeout_s=5))
    assert (err.kind, err.status) == ("status", 500) and "body unreadable" in str(err), str(err)


def test_sse_decoder_drops_a_bom_split_across_reads() -> None:
    """Was: the BOM's bytes stuck to the first field name, and the first event was lost."""
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == [] and decoder.feed(b"\xbb") == []
    assert decoder.feed(b"\xbfdata: 1\n\n") == [SSEvent("message", "1")]


def test_sse_decoder_an_empty_read_keeps_a_split_crlf_one_ending() -> None:
    """Was: an empty read between CR and LF made the LF a blank line (one event became two)."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == [] and decoder.feed(b"") == []
    assert decoder.feed(b"\ndata: b\n\n") == [SSEvent("message", "a\nb")]


def test_proxy_credentials_never_reach_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refused-proxy message quoted the proxy URL with its password; a dead proxy was
    reported as 'nothing listening' at the server."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "socks5://user:s3cret@127.0.0.1:1080")
    with pytest.raises(EndpointError) as info:
        OpenAIClient("http://10.1.2.3:8000/v1")
    assert "s3cret" not in str(info.value) and "user:***@" in str(info.value)
    monkeypatch.setenv("HTTP_PROXY", f"http://user:s3cret@127.0.0.1:{free_port()}")
    err = fails("http://10.1.2.3:8000/v1", GenRequest(MODEL, "a", timeout_s=5))
    assert err.kind == "connect" and "cannot reach the proxy" in str(err), str(err)
    assert "s3cret" not in str(err)


def test_env_proxy_reads_schemeless_proxies_and_no_proxy_ports() -> None:
    """As httpx and curl: 'proxy:3128' is an http proxy (was a config error), and a NO_PROXY
    entry 'host:port' exempts that server (was ignored, so the request went to the proxy)."""
    env = {"http_proxy": "proxy:3128"}
    assert env_proxy("http://10.0.0.1:8000/v1", env) == "http://proxy:3128"
    env["no_proxy"] = "10.0.0.1:8000"
    assert env_proxy("http://10.0.0.1:8000/v1", env) is None
    assert env_proxy("http://10.0.0.1:9000/v1", env) == "http://proxy:3128"


def test_a_name_that_does_not_resolve_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    err = fails("http://gpufit-no-such-host.invalid/v1", GenRequest(MODEL, "a", timeout_s=5))
    assert err.kind == "connect" and "does not resolve" in str(err), str(err)


# llama.cpp's server streams an error as an "error:" field line, then "data: [DONE]".
LLAMA_CPP_ERROR = (
    b'error: {"code": 500, "message": "llama_decode failed", "type": "server_error"}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("before", [b"", CHUNK_A], ids=["before-content", "mid-stream"])
def test_a_llama_cpp_error_line_in_a_200_stream_fails_with_its_words(before: bytes) -> None:
    """Was: mid-stream, a pass with the partial text; before any content, 'no content'."""
    with answering(SSE_HEAD + before + LLAMA_CPP_ERROR) as url:
        err = fails(url, GenRequest(MODEL, "a", max_tokens=2, timeout_s=5))
    assert err.kind == "stream-error" and "llama_decode failed" in str(err), str(err)


def test_done_without_any_finish_reason_is_not_a_finished_generation() -> None:
    """Was a pass: [DONE] after one chunk and no finish_reason read as a complete answer."""
    with answering(SSE_HEAD + CHUNK_A + b"data: [DONE]\n\n") as url:
        err = fails(url, GenRequest(MODEL, "a", max_tokens=2, timeout_s=5))
    assert err.kind == "dropped" and "with [DONE] but without a finish_reason" in str(err)


def test_an_aborted_generation_is_a_stream_error() -> None:
    """Was a pass: vLLM and SGLang end a request they gave up on with finish_reason 'abort'."""
    abort = b'data: {"choices": [{"text": "", "finish_reason": "abort"}]}\n\n'
    with answering(SSE_HEAD + CHUNK_A + abort + b"data: [DONE]\n\n") as url:
        err = fails(url, GenRequest(MODEL, "a", max_tokens=2, timeout_s=5))
    assert err.kind == "stream-error" and "finish_reason 'abort'" in str(err), str(err)


def test_sse_decoder_reads_an_error_field_as_an_error_event() -> None:
    assert SSEDecoder().feed(b"error: {}\n\ndata: [DONE]\n\n") == [
        SSEvent("error", "{}"),
        SSEvent("message", "[DONE]"),
    ]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://user:s3cret@127.0.0.1:1/v1", "http://user:***@127.0.0.1:1/v1 carries credentials"),
        ("http://user@127.0.0.1:1/v1", "carries credentials"),
        ("http://[::1/v1", "Invalid IPv6 URL"),
        ("http://h:99999/v1", "Port out of range"),
    ],
)
def test_an_endpoint_with_credentials_or_not_parsable_is_one_config_error(
    url: str, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: the password in every message, a raw aiohttp ValueError next to api_key_env, and a
    raw ValueError for a URL urllib cannot split."""
    monkeypatch.setenv("GPUFIT_TEST_KEY", "sk-1")
    with pytest.raises(EndpointError) as info:
        OpenAIClient(url, api_key_env="GPUFIT_TEST_KEY")
    assert info.value.kind == "config" and said in str(info.value), str(info.value)
    assert "s3cret" not in str(info.value)


def test_sse_decoder_holds_a_long_line_in_linear_time() -> None:
    """Was quadratic: each read re-joined and re-split the whole unfinished line. 4 MiB in
    4 KiB reads took 4.6 s of CPU before, 0.04 s now (dev-cpu); 15 MiB in 64 KiB, 11 s."""
    decoder = SSEDecoder()
    piece = b"x" * 4096
    began = time.process_time()
    decoder.feed(b"data: ")
    for _ in range(1024):
        decoder.feed(piece)
    events = decoder.feed(b"\n\n")
    assert len(events[0].data) == 4 * 2**20
    assert time.process_time() - began < 1.0


def test_sse_decoder_refuses_an_event_that_never_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """data lines that never meet a blank line were held without bound."""
    monkeypatch.setattr(SSEDecoder, "MAX_LINE", 64)
    decoder = SSEDecoder()
    decoder.feed(b"data: " + b"x" * 40 + b"\n")
    with pytest.raises(SSEError, match="an event of over 64 bytes"):
        decoder.feed(b"data: " + b"x" * 40 + b"\n")


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


def test_json_nested_too_deep_is_one_endpoint_error_everywhere() -> None:
    """Was a raw RecursionError from json.loads: in a stream, in an error body, in /v1/models."""
    with answering(SSE_HEAD + b"data: " + DEEP_JSON + b"\n\n") as url:
        assert fails(url, GenRequest(MODEL, "a", timeout_s=5)).kind == "malformed"
    head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n"
    with answering(head % (500, len(DEEP_JSON)) + DEEP_JSON) as url:
        assert fails(url, GenRequest(MODEL, "a", timeout_s=5)).status == 500

    async def models(url: str) -> Any:
        async with OpenAIClient(url) as c:
            return await c.list_models()

    with (
        answering(head % (200, len(DEEP_JSON)) + DEEP_JSON) as url,
        pytest.raises(EndpointError, match="not an OpenAI model list"),
    ):
        asyncio.run(models(url))


def test_a_count_above_max_tokens_is_not_taken() -> None:
    """Was a pass: usage claiming 50 tokens for max_tokens 2 made every tokens/s figure 25x."""
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 50}}\n\n'
    with answering(SSE_HEAD + CHUNK_A + CHUNK_B + usage + b"data: [DONE]\n\n") as url:
        err = fails(url, GenRequest(MODEL, "a", max_tokens=2, timeout_s=5))
    assert err.kind == "malformed" and "50 completion tokens" in str(err), str(err)
    # Text enough for 50 tokens (a token is a byte or more): only the cap is in question here.
    long_a = CHUNK_A.replace(b'"a"', b'"' + b"a" * 30 + b'"')
    long_b = CHUNK_B.replace(b'"b"', b'"' + b"b" * 30 + b'"').replace(b'"length"', b'"stop"')
    with answering(SSE_HEAD + long_a + long_b + usage + b"data: [DONE]\n\n") as url:
        asked = GenRequest(MODEL, "a", max_tokens=2, extra={"max_completion_tokens": 64})
        assert stream(url, asked).completion_tokens == 50  # the cap the server was given


def test_a_get_that_trickles_is_bounded_by_stall_s() -> None:
    """Was unbounded: a byte every 0.3 s never tripped the per-read limit, so GET /v1/models
    (and the start of every suite target) waited as long as the server liked."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    hung_up = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            try:
                for _ in range(10):
                    time.sleep(0.3)
                    conn.sendall(b" ")
            except OSError:
                hung_up.set()  # the client gave up and closed: nothing left waiting

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def models() -> Any:
        async with OpenAIClient(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", stall_s=1) as c:
            return await c.list_models()

    began = time.monotonic()
    try:
        with pytest.raises(EndpointError, match="no whole answer within 1 s") as info:
            asyncio.run(models())
    finally:
        thread.join(5)
        listener.close()
    assert info.value.kind == "timeout" and time.monotonic() - began < 2.5
    assert hung_up.is_set()


def test_an_api_key_with_a_line_break_is_one_config_error_or_trimmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was a raw aiohttp ValueError ('Forbidden control character'): a key read from a file
    ends in a newline (trimmed now); one with a line break inside is a config error that names
    the variable and never the key."""
    monkeypatch.setenv("GPUFIT_TEST_KEY", "sk-1\n")
    with answering(SSE_HEAD + CHUNK_A + CHUNK_B + b"data: [DONE]\n\n") as url:
        r = stream(url, GenRequest(MODEL, "a", max_tokens=2), api_key_env="GPUFIT_TEST_KEY")
    assert r.text == "ab"
    monkeypatch.setenv("GPUFIT_TEST_KEY", "sk-secret\r\nX-Injected: 1")
    with pytest.raises(EndpointError, match="GPUFIT_TEST_KEY.*control character") as info:
        OpenAIClient("http://127.0.0.1:1/v1", api_key_env="GPUFIT_TEST_KEY")
    assert info.value.kind == "config" and "sk-secret" not in str(info.value)
