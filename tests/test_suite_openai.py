"""Suites with ``backend: openai`` targets, against the local fake server (issue 11).

The happy path and the faults a real server cannot show on demand: each fault is one clear
failure under ``--gpufit-on-missing=fail`` (never a skip, a pass, a hang or a traceback), the
next target still runs, and nothing launched is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Imported once here: pytester's in-process runs restore sys.modules, and httpx maps the
# exceptions of the httpcore it first saw (a second httpcore's errors would escape unmapped);
# aiohttp likewise keeps one copy of its exception classes.
import aiohttp  # noqa: F401
import httpcore  # noqa: F401
import httpx  # noqa: F401
import pytest
from serving_fakes import MODEL, FakeOpenAI

from pytest_gpufit.serving.server import free_port

TESTS = Path(__file__).parent
FAIL = "--gpufit-on-missing=fail"


def suite(targets: str) -> str:
    return f"suite: served\ntargets:\n{targets}"


def target(name: str, checks: str, **fields: str) -> str:
    lines = [f"  - name: {name}", "    backend: openai", "    device: cpu"]
    lines += [f"    {k}: {v}" for k, v in fields.items()]
    lines.append("    checks:")
    lines += [f"      {c}" for c in checks.strip().splitlines()]
    return "\n".join(lines) + "\n"


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """node id tail (target::check) -> outcome, from -rA's short summary."""
    out = {}
    for line in result.outlines:
        for word in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            if line.startswith(word + " ") and "::" in line:
                node = line.split(" ", 1)[1].split(" - ")[0]
                out["::".join(node.split("::")[1:])] = word
    return out


def no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str()
    assert "INTERNALERROR" not in text and "Traceback (most recent call last)" not in text


@pytest.fixture
def fake() -> FakeOpenAI:
    with FakeOpenAI() as server:
        yield server


# ---- collection: what a backend cannot measure ---------------------------------------------

COLLECTION = {
    "fp32_precision": (
        "precision: {reference: fp32, max_kl: 0.1}",
        "yaml:8: targets[0].checks.precision.reference: the openai backend cannot measure "
        "this: it needs full fp32 logits",
    ),
    "default_precision": (
        "precision: {}",
        "yaml:8: targets[0].checks.precision.reference: the openai",
    ),
    "loads": (
        "loads: {max_peak_memory: 10GB}",
        "yaml:8: targets[0].checks.loads: the openai backend cannot measure this: it needs "
        "loading the model in the test process",
    ),
    "expect_tokens": (
        "generates: {prompt: hi,\n  expect_tokens: [1, 2]}",
        "s.gpufit.yaml:9: targets[0].checks.generates.expect_tokens: the openai backend cannot",
    ),
    "batch": ("throughput: {batch: 4}", "yaml:8: targets[0].checks.throughput.batch"),
    "fits_without_model": ("fits: {}", "yaml:8: targets[0].checks.fits: the fit estimate needs"),
    "bad_slo": (
        "load: {slo: {ttft_p99: 5}}",
        "yaml:8: targets[0].checks.load.slo: unknown SLO 'ttft_p99'; did you mean 'ttft_ms_p99'",
    ),
}


@pytest.mark.parametrize("case", COLLECTION)
def test_check_the_backend_cannot_measure_is_a_collection_error(
    pytester: pytest.Pytester, case: str
) -> None:
    checks, expected = COLLECTION[case]
    pytester.makefile(
        ".gpufit.yaml", s=suite(target("t", checks, endpoint="http://127.0.0.1:9/v1"))
    )
    result = pytester.runpytest("s.gpufit.yaml", FAIL)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert expected in result.stdout.str()
    no_traceback(result)


def test_transformers_checks_keep_their_capabilities(pytester: pytest.Pytester) -> None:
    text = "suite: s\ntargets:\n  - name: t\n    model: qwen3-0.6b\n    weights: random\n"
    text += "    checks:\n      precision: {reference: fp32}\n      loads: {max_peak_memory: 9GB}\n"
    pytester.makefile(".gpufit.yaml", s=text)
    result = pytester.runpytest("s.gpufit.yaml", "--collect-only", "-q")
    assert result.ret == 0 and "2 tests collected" in result.stdout.str()


TARGET_ERRORS = {
    "no_endpoint": ("", "", "targets[0]: backend: openai needs endpoint:"),
    "port_without_launch": (
        "endpoint: http://127.0.0.1:{port}/v1",
        "",
        "targets[0].endpoint: {port} is the port gpufit picks for a launched server",
    ),
    "command_without_port": (
        "",
        "launch: {command: [srv]}",
        "targets[0].launch.command: the endpoint uses {port}, so the command must pass it",
    ),
    "launch_key": ("", "launch: {command: [srv, '{port}'], wait: 3}", "launch.wait: unknown key"),
    "launch_with_fixed_port": (  # issue 18.8: readiness polled {port}, the checks asked 18777
        "endpoint: http://127.0.0.1:18777/v1",
        "launch: {command: [srv, --port, '{port}']}",
        "s.gpufit.yaml:5: targets[0].endpoint: 'http://127.0.0.1:18777/v1' names a fixed port, "
        "but launch: starts a server on the port gpufit picks",
    ),
    "api_key_value": (
        "endpoint: http://h:1/v1\n    api_key_env: sk-123abc!",
        "",
        "targets[0].api_key_env: expected the NAME of an environment variable",
    ),
}


@pytest.mark.parametrize("case", TARGET_ERRORS)
def test_bad_served_target_is_one_clear_error(pytester: pytest.Pytester, case: str) -> None:
    endpoint, launch, expected = TARGET_ERRORS[case]
    text = "suite: s\ntargets:\n  - name: t\n    backend: openai\n"
    text += "".join(f"    {part}\n" for part in (endpoint, launch) if part)
    text += "    checks:\n      serves: {}\n"
    pytester.makefile(".gpufit.yaml", s=text)
    result = pytester.runpytest("s.gpufit.yaml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert expected in result.stdout.str(), result.stdout.str()
    no_traceback(result)


def test_openai_keys_on_a_transformers_target_are_an_error(pytester: pytest.Pytester) -> None:
    text = "suite: s\ntargets:\n  - name: t\n    model: qwen3-0.6b\n    weights: random\n"
    text += "    endpoint: http://h:1/v1\n    checks:\n      fits: {}\n"
    pytester.makefile(".gpufit.yaml", s=text)
    result = pytester.runpytest("s.gpufit.yaml")
    assert "s.gpufit.yaml:6: targets[0].endpoint: only for backend: openai" in result.stdout.str()


# ---- the happy path on the fake ---------------------------------------------------------------

HAPPY = """serves: {}
generates: {prompt: "the capital of france is", max_new_tokens: 4, expect_contains: "t1"}
throughput: {prompt_tokens: 12, new_tokens: 5, warmup: 0, repeats: 2, min_decode_tok_s: 1}
load: {concurrency: [1, 3], rate: [50], requests: 6, prompt_tokens: 8, new_tokens: 4,
  slo: {ttft_ms_p99: 5000, itl_ms_p99: 5000}, min_goodput: 100%, max_error_rate: 0%}
precision: {reference: golden, prompt_tokens: 8, new_tokens: 3, top_k: 2}
"""


def test_served_target_against_a_running_server(
    pytester: pytest.Pytester, fake: FakeOpenAI, tmp_path: Path
) -> None:
    pytester.makefile(".gpufit.yaml", s=suite(target("fake", HAPPY, endpoint=fake.base_url)))
    report = tmp_path / "report.json"
    # save: the golden check records its reference (with baselines off it would judge nothing).
    result = pytester.runpytest(
        "s.gpufit.yaml", FAIL, "-rA", f"--gpufit-report={report}", "--gpufit-baseline=save"
    )
    assert outcomes(result) == {
        f"fake::{c}": "PASSED" for c in ("serves", "generates", "throughput", "load", "precision")
    }, result.stdout.str()
    # One progress line per level, during the run.
    result.stdout.fnmatch_lines(
        [
            "gpufit load fake: concurrency 1: 6/6 ok, *goodput 100%",
            "gpufit load fake: concurrency 3: 6/6 ok, *",
            "gpufit load fake: rate 50/s: 6/6 ok, *",
        ]
    )
    result.stdout.fnmatch_lines(["*served::fake: engine vllm 0.32.0*", "*openai targets: what a*"])
    data = json.loads(report.read_text())["measurements"]
    serves = data["s.gpufit.yaml::fake::serves"]["metrics"]
    assert serves["engine"] == "vllm 0.32.0" and serves["served_model"] == MODEL
    assert serves["max_model_len"] == 512
    load = data["s.gpufit.yaml::fake::load"]["metrics"]
    assert set(load["levels"]) == {"concurrency 1", "concurrency 3", "rate 50/s"}
    for key in ("c1", "c3", "r50"):
        assert load[f"{key}_goodput"] == 1.0 and load[f"{key}_ttft_ms_p99"] > 0
        assert load[f"{key}_itl_ms_p99"] >= 0 and load[f"{key}_output_tok_s"] > 0
    throughput = data["s.gpufit.yaml::fake::throughput"]["metrics"]
    assert throughput["prompt_tokens"] == 12 and throughput["decode_tok_s"] > 0
    golden = data["s.gpufit.yaml::fake::precision"]["metrics"]["golden"]
    assert golden["tokens"] == [" t0", " t1", " t2"]
    assert all(t in top for t, top in zip(golden["tokens"], golden["top_ids"], strict=True))
    # The requests themselves: streamed, usage asked for, ignore_eos for timed runs.
    bodies = fake.bodies
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} for b in bodies)
    assert any(b.get("ignore_eos") for b in bodies)


def test_baseline_covers_load_levels_and_the_engine(
    pytester: pytest.Pytester, fake: FakeOpenAI
) -> None:
    checks = "load: {concurrency: [2], requests: 4, prompt_tokens: 4, new_tokens: 3}\n"
    pytester.makefile(".gpufit.yaml", s=suite(target("fake", checks, endpoint=fake.base_url)))
    pytester.runpytest("s.gpufit.yaml", "--gpufit-baseline=save").assert_outcomes(passed=1)
    (record,) = (pytester.path / ".gpufit" / "baselines").rglob("*.json") or [None]
    saved = json.loads(Path(record).read_text())
    assert saved["fingerprint"]["engine"] == "vllm 0.32.0"
    metrics = saved["results"]["s.gpufit.yaml::fake::load"]["metrics"]
    assert metrics["c2_goodput"] == 1.0
    # The same server, now 30x slower per token: the level's TTFT and tok/s regress.
    fake.delay_s = 0.03
    result = pytester.runpytest("s.gpufit.yaml", "--gpufit-baseline=compare", "-rA")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no environment change: concurrency 2 TTFT p99 ms * -> *"])


# ---- faults: each one clear failure, and the next target runs ---------------------------------

DIE_MID_LOAD = """
import os, sys, threading, time
sys.path.insert(0, {tests!r})
from serving_fakes import FakeOpenAI
print("fake engine pid", os.getpid(), flush=True)
{extra}
with FakeOpenAI(int(sys.argv[1])) as server:
    server.delay_s = 0.02
    while len(server.bodies) < {die_after}:
        time.sleep(0.01)
    print("dying now", flush=True)
    os._exit(9)
"""


SIGNALS_THE_LOAD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from serving_fakes import FakeOpenAI
with FakeOpenAI(int(sys.argv[1])) as server:
    server.delay_s = 0.5
    while not any(b.get("max_tokens") == 20 for b in list(server.bodies)):
        time.sleep(0.01)
    Path({ready!r}).write_text("a load request arrived")
    while True:
        time.sleep(1)
"""


def launched(tmp_path: Path, name: str, die_after: int = 10**9, extra: str = "") -> str:
    script = tmp_path / f"{name}.py"
    script.write_text(DIE_MID_LOAD.format(tests=str(TESTS), die_after=die_after, extra=extra))
    return json.dumps({"command": [sys.executable, str(script), "{port}"], "ready_timeout_s": 30})


def _processes_with(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_every_fault_is_one_clear_failure_and_the_next_target_runs(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KEY", "wrong")
    closed = f"http://127.0.0.1:{free_port()}/v1"
    fakes = {mode: FakeOpenAI(mode=mode) for mode in ("401", "malformed", "stall", "ok")}
    flaky = FakeOpenAI()
    flaky.fail_after = 5  # 3 prompt-sizing requests and 2 of the load answer, then HTTP 500
    load = "load: {concurrency: [1], requests: 4, prompt_tokens: 4, new_tokens: 3, timeout_s: 2}"
    gen = 'generates: {prompt: "the", max_new_tokens: 3}'
    targets = [
        target("nothing-listening", "serves: {}", endpoint=closed),
        target("wrong-model", "serves: {}", endpoint=fakes["ok"].base_url, served_model="no/such"),
        target("unauthorized", gen, endpoint=fakes["401"].base_url, api_key_env="FAKE_KEY"),
        target("error-500-mid-run", load, endpoint=flaky.base_url),
        target("malformed-sse", gen, endpoint=fakes["malformed"].base_url),
        target("stalled-stream", load, endpoint=fakes["stall"].base_url),
        target("not-found", "serves: {}", launch='{command: [no-such-server-gpufit, "{port}"]}'),
        target(
            "dies-at-start",
            "serves: {}\n" + gen,
            launch=json.dumps(
                {"command": [sys.executable, "-c", "print('engine boom'); exit(3)", "{port}"]}
            ),
        ),
        target(
            "dies-mid-load",
            load.replace("requests: 4", "requests: 40"),
            launch=launched(tmp_path, "mid-load-gpufit", die_after=4),
        ),
        target(
            "forbidden-log",
            "serves: {}",
            launch=launched(
                tmp_path, "forbid-gpufit", extra='print("Using default MoE config")'
            ).rstrip("}")
            + ', "log_forbid": ["Using default MoE config"]}',
        ),
        target("healthy", gen, endpoint=fakes["ok"].base_url),
    ]
    pytester.makefile(".gpufit.yaml", s=suite("".join(targets)))
    for server in [*fakes.values(), flaky]:
        server.__enter__()
    began = time.monotonic()
    try:
        result = pytester.runpytest("s.gpufit.yaml", FAIL, "-rA", "-p", "no:randomly")
    finally:
        for server in [*fakes.values(), flaky]:
            server.__exit__(None, None, None)
    took = time.monotonic() - began
    text = result.stdout.str()
    got = outcomes(result)
    expected = {
        "nothing-listening::serves": "nothing listening there",
        "wrong-model::serves": "served_model 'no/such' is not served; GET /v1/models lists",
        "unauthorized::generates": "HTTP 401 unauthorized",
        "error-500-mid-run::load": "concurrency 1: 2 of 4 requests failed",
        "malformed-sse::generates": "malformed event in the stream",
        "stalled-stream::load": "took longer than its 2 s limit",
        "not-found::serves": "launch command 'no-such-server-gpufit' not found",
        "dies-at-start::serves": "server exited with code 3 during start-up",
        "dies-at-start::generates": "server exited with code 3 during start-up",
        "dies-mid-load::load": "the server exited with code",
        "forbidden-log::serves": "log_forbid 'Using default MoE config' seen: Using default MoE",
    }
    for node, words in expected.items():
        assert got.get(node) == "FAILED", (node, got)
        assert words in text, (node, words)
    assert got["healthy::generates"] == "PASSED"
    assert "engine boom" in text  # the log tail of the server that died at start-up
    assert "server log: " in text or "last lines of" in text
    no_traceback(result)
    assert took < 90, f"the faults took {took:.0f} s: something waited past its timeout"
    # This test's launch scripts live in its tmp_path: another test's server running beside it
    # (pytest -n 2 without --dist loadfile) is not one this test left behind.
    assert not _processes_with(f"{tmp_path}/"), "a launched server was left running"


def test_plugin_and_collection_import_no_http_client(tmp_path: Path) -> None:
    (tmp_path / "s.gpufit.yaml").write_text(
        suite(target("t", "serves: {}\nload: {}", endpoint="http://127.0.0.1:9/v1"))
    )
    code = (
        "import sys, pytest\n"
        f"code = pytest.main([{str(tmp_path / 's.gpufit.yaml')!r}, '--collect-only', '-q', "
        "'-p', 'no:cacheprovider'])\n"
        "print('loaded:', sorted(m for m in ('aiohttp', 'httpx', 'torch') if m in sys.modules))\n"
        "raise SystemExit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFIT_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loaded: []" in out.stdout


def test_a_target_server_stops_after_its_last_check_and_on_ctrl_c(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """The first target's server is gone before the second starts (its launch script checks);
    then a run interrupted with SIGINT mid-load leaves no server behind."""
    check_first = (
        "from pathlib import Path\n"
        "alive = [p for p in Path('/proc').iterdir() if p.name.isdigit() and b'first-gpufit' in "
        "(p / 'cmdline').read_bytes()]\n"
        "if alive: print('FIRST STILL RUNNING'); os._exit(5)"
    )
    gen = 'generates: {prompt: "the", max_new_tokens: 2}'
    targets = target("first", gen, launch=launched(tmp_path, "first-gpufit"))
    targets += target("second", gen, launch=launched(tmp_path, "second-gpufit", extra=check_first))
    pytester.makefile(".gpufit.yaml", s=suite(targets))
    result = pytester.runpytest("s.gpufit.yaml", FAIL, "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert not _processes_with(f"{tmp_path}/")

    # A server whose every token takes half a second; it writes IN_LOAD once a request of the
    # load (20 new tokens, not the 1-token prompt sizing) has arrived: the readiness signal.
    in_load = tmp_path / "in-load"
    script = tmp_path / "interrupted-gpufit.py"
    script.write_text(SIGNALS_THE_LOAD.format(tests=str(TESTS), ready=str(in_load)))
    launch = json.dumps({"command": [sys.executable, str(script), "{port}"], "ready_timeout_s": 30})
    load = "load: {concurrency: [2], requests: 50, prompt_tokens: 4, new_tokens: 20}"
    pytester.makefile(".gpufit.yaml", s=suite(target("slow", load, launch=launch)))
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "s.gpufit.yaml", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while not in_load.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the signal, not guessing how long the start takes
        assert in_load.exists(), "the load never reached the server"
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert b"KeyboardInterrupt" in out, out.decode()[-2000:]
    assert not _processes_with("interrupted-gpufit.py"), "Ctrl-C left the server running"


def test_launched_server_is_pinned_to_the_judged_gpu_and_its_log_figures_are_reported(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Two cards; the requirement only the second meets: the server gets that card, and what
    its log says it allocated stands next to the fit engine's estimate."""
    from fake_probe import catalog_probe

    pytester.makeconftest(catalog_probe("t4,rtx-4090"))
    log_lines = (
        'print("CVD=" + os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))\n'
        'print("INFO [gpu_model_runner.py:1] Model loading took 1.10 GiB memory and 3.1 seconds")\n'
        'print("INFO [kv_cache_utils.py:1] GPU KV cache size: 6,288 tokens")\n'
        'print("INFO [kv_cache_utils.py:2] Maximum concurrency for 8,192 tokens per request: '
        '1.50x")'
    )
    text = target("pinned", "serves: {}", launch=launched(tmp_path, "pin-gpufit", extra=log_lines))
    text = text.replace("device: cpu", "device: cuda\n    model: qwen3-0.6b")
    text = text.replace("    checks:", "    requires: {vram: 20GB}\n    checks:")
    pytester.makefile(".gpufit.yaml", s=suite(text))
    report = tmp_path / "report.json"
    result = pytester.runpytest("s.gpufit.yaml", FAIL, f"--gpufit-report={report}")
    result.assert_outcomes(passed=1)
    metrics = json.loads(report.read_text())["measurements"]["s.gpufit.yaml::pinned::serves"]
    metrics = metrics["metrics"]
    log = Path(metrics["server_log"]).read_text()
    from pytest_gpufit.hardware.catalog import simulated_gpus

    uuid = simulated_gpus("t4,rtx-4090")[1].uuid
    assert f"CVD={uuid or 1}" in log, log
    assert metrics["engine_weights_gib"] == 1.1 and metrics["engine_kv_cache_tokens"] == 6288
    assert metrics["engine_max_concurrency"] == 1.5 and metrics["estimate_weights_bytes"] > 0
    result.stdout.fnmatch_lines(
        ["*served::pinned: engine vllm 0.32.0, log: weights 1.1 GiB (fit estimate *), KV cache*"]
    )


def test_an_engine_change_leads_a_regression_message() -> None:
    from pytest_gpufit.baseline import environment_changes

    old, new = {"engine": "vllm 0.26.0"}, {"engine": "vllm 0.29.0"}
    assert environment_changes(old, new) == ["engine vllm 0.26.0 -> vllm 0.29.0"]
