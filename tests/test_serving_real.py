"""The happy path against a real server: ``transformers serve`` on a tiny local checkpoint.

One server for the module, launched through ``LaunchedServer``. The checkpoint has head size
64 (hidden 256, 4 heads), which vLLM's CPU attention also accepts, so the same model can serve
a vLLM run. Deselect with ``-k "not serving_real"`` where a real server cannot start.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tiny_models import WORDS, save_checkpoint, save_tokenizer

from pytest_gpufit.serving.client import GenRequest, OpenAIClient
from pytest_gpufit.serving.errors import EndpointError
from pytest_gpufit.serving.load import Slo, format_level, run_load
from pytest_gpufit.serving.prompts import sized_prompt
from pytest_gpufit.serving.server import LaunchedServer, group_alive

# The machine alone for this file: its streams are timed (tests/conftest.py, cpu_alone).
pytestmark = pytest.mark.usefixtures("cpu_alone")

T = TypeVar("T")

# A minimal chat template so /v1/chat/completions works on the word-level tokenizer.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def save_serving_checkpoint(folder: Path) -> Path:
    """A tiny Llama (bf16, head size 64) with a ``tokenizers``-made tokenizer and chat template."""
    save_checkpoint(
        folder,
        "llama",
        vocab_size=len(WORDS) + 12,
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=512,
        num_hidden_layers=2,
    )
    save_tokenizer(folder)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return folder


def transformers_cli() -> str:
    beside = Path(sys.executable).with_name("transformers")
    found = str(beside) if beside.exists() else shutil.which("transformers")
    assert found, "the transformers CLI is not installed (pip install 'transformers[serving]')"
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LaunchedServer, str]]:
    folder = save_serving_checkpoint(tmp_path_factory.mktemp("tiny-serving"))
    command = [transformers_cli(), "serve", str(folder), "--host", "127.0.0.1"]
    command += ["--port", "{port}", "--device", "cpu"]
    log = tmp_path_factory.mktemp("logs") / "transformers-serve.log"
    server = LaunchedServer(command, log_path=log, ready_timeout_s=240, grace_s=10)
    with server:
        yield server, str(folder)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_models_and_engine_facts(served: tuple[LaunchedServer, str]) -> None:
    server, model = served

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.list_models(), await client.engine_facts()

    models, facts = run(go())
    assert [m.id for m in models] == [model]
    assert models[0].max_model_len is None  # transformers serve does not list it
    assert facts.version is None  # and has no /version endpoint


def test_stream_usage_and_timings(served: tuple[LaunchedServer, str]) -> None:
    server, model = served
    request = GenRequest(model, "the capital of france is", max_tokens=6, logprobs=2)

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.stream(request)

    r = run(go())
    assert r.prompt_tokens == 5 and r.completion_tokens == 6
    assert r.finish_reason == "length" and r.text.strip()
    assert 1 <= r.content_chunks <= 6 and len(r.itl_s) == r.content_chunks - 1
    assert r.ttft_s > 0 and r.ttft_s + sum(r.itl_s) <= r.e2e_s
    # Each read's events share its instant, so a gap is 0 where two chunks came in one read:
    # the tiny model writes them about 0.3 ms apart, and a client scheduled that late reads two
    # at once (CI 2026-12-06, with the machine to itself). Never negative; the stream as a
    # whole came paced, over more than one read, or the client would have refused it.
    assert all(gap >= 0 for gap in r.itl_s) and r.buffered is None
    assert r.reads >= 2 and sum(r.itl_s) > 0
    # transformers serve ignores logprobs: the client says "none", never an empty success.
    assert r.logprobs is None


def test_chat_stream(served: tuple[LaunchedServer, str]) -> None:
    server, model = served

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.stream(GenRequest(model, "paris is", max_tokens=3, chat=True))

    r = run(go())
    assert r.completion_tokens == 3 and r.content_chunks >= 1


def test_ignore_eos_rejected_then_left_out(served: tuple[LaunchedServer, str]) -> None:
    server, model = served
    request = GenRequest(model, "the card", max_tokens=4, ignore_eos=True, require_max_tokens=True)

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.stream(request), client.ignore_eos_rejected

    r, rejected = run(go())
    # transformers serve refuses the field and takes generation_config {"eos_token_id": -1}.
    assert rejected and r.exact_by == "generation_config" and r.completion_tokens == 4
    assert r.finish_reason == "length"


def test_wrong_model_is_one_clear_error(served: tuple[LaunchedServer, str]) -> None:
    server, _ = served

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.stream(GenRequest("no/such-model", "the", max_tokens=2))

    with pytest.raises(EndpointError) as info:
        run(go())
    assert info.value.kind == "model" and "no/such-model" in str(info.value)


def test_prompt_of_a_requested_length(served: tuple[LaunchedServer, str]) -> None:
    server, model = served

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await sized_prompt(client, model, 12)

    prompt = run(go())
    assert prompt.tokens == 12 and prompt.text.split() == ["the"] * 12


def test_load_levels(served: tuple[LaunchedServer, str]) -> None:
    server, model = served
    lines: list[str] = []

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await run_load(
                client,
                [GenRequest(model, "the model runs on", max_tokens=3, timeout_s=120)],
                concurrency=[1, 4],
                max_requests=4,
                max_seconds=120,
                slo=Slo(ttft_ms=60_000),
                on_level=lambda level: lines.append(format_level(level)),
            )

    levels = run(go())
    assert [level.concurrency for level in levels] == [1, 4]
    for level in levels:
        assert (level.completed, level.failed, level.goodput) == (4, 0, 1.0), level.errors
        assert level.total_output_tokens == 12
        # A prompt of its own per request (four words in front), one length as counted.
        assert level.distinct_prompts == 4 and level.prompt_tokens == (8, 8), level
        assert level.ttft_ms is not None and level.e2el_ms is not None
        assert level.ttft_ms.p50 <= level.ttft_ms.p99 < level.e2el_ms.p99 + 1e-9
    assert len(lines) == 2


def test_graceful_stop_leaves_nothing(served: tuple[LaunchedServer, str]) -> None:
    """Last in the module: stop the shared server (the fixture's stop is then a no-op)."""
    server, _ = served
    pgid = server.pgid
    assert pgid is not None and group_alive(pgid)
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    # SIGTERM sufficed (no SIGKILL): uvicorn shut down cleanly, then re-raised the signal.
    assert server.returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in server.log_tail(40)
