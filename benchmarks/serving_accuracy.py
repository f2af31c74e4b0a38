"""Accuracy against known truth: what gpufit's client adds to TTFT and ITL.

The honest mode of ``tests/lying_server.py`` runs in its own process (pinned to another core
where there is one): it waits ``--ttft`` seconds after a request's first byte before the first
token, ``--gap`` between tokens (paced on its own clock from the request's arrival), and
records when each request arrived and when each token was written (``time.perf_counter()``,
CLOCK_MONOTONIC on Linux: one clock for both processes). gpufit's load generator
(``serving.load.run_level``, pinned to one core) runs closed-loop levels of ``--requests``
requests, each with a prompt of its own. Per level it prints, as medians (p50) and p99 over
the requests:

- ``TTFT - injected``: the client's TTFT less the injected value (what a user reads off);
- ``server late``: how late the server's own first write was (its TTFT less the injected);
- ``client adds``: the client's TTFT less the server's (first write - arrival): the time the
  client adds, from the instant it starts the request to the first byte it sees, around the
  server's own work: sending (request built, written, over loopback) and receiving (read,
  decoded, stamped);
- ``ITL error``: each gap the client measured less the gap between the server's two writes;
- ``CPU ms/req``: the client process's CPU time over the level per request;
- ``send/receive``: the client's part before the server saw the request's first byte, and
  after the server wrote the first token (the two halves of ``client adds``).

``--client DIR`` measures the ``pytest_gpufit`` of another checkout (an older client).

    python benchmarks/serving_accuracy.py --requests 48 --concurrency 1,8 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# --client DIR measures the pytest_gpufit of another checkout (an A/B against an older client).
CLIENT = sys.argv[sys.argv.index("--client") + 1] if "--client" in sys.argv else str(ROOT)
sys.path.insert(0, CLIENT)

from pytest_gpufit.serving.client import GenRequest, OpenAIClient, StreamResult  # noqa: E402
from pytest_gpufit.serving.load import run_level  # noqa: E402

MODEL = "liar/tiny"


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def level(url: str, concurrency: int, requests: int, tokens: int) -> dict[str, Any]:
    # A prompt of its own per request (the truth is joined by prompt), as run_level's unique
    # prompts are; given here so that an older client without them (--compare) runs the same.
    sent = [
        GenRequest(MODEL, f"q{i} " + " ".join(["the"] * 15), max_tokens=tokens, ignore_eos=True)
        for i in range(requests + concurrency * 2)
    ]
    shared = {"prompts": "shared"} if "prompts" in run_level.__kwdefaults__ else {}
    seen: list[tuple[str, StreamResult]] = []
    async with OpenAIClient(url, max_connections=max(concurrency, 1)) as client:
        # Warm the connections (one per worker), then time a level.
        warm = sent[requests:]
        await run_level(client, warm, concurrency=concurrency, max_requests=len(warm), **shared)
        original = client.stream

        async def kept(request: GenRequest) -> StreamResult:
            result = await original(request)
            seen.append((request.prompt, result))
            return result

        client.stream = kept  # type: ignore[method-assign]
        cpu0 = time.process_time()
        done = await run_level(
            client, sent[:requests], concurrency=concurrency, max_requests=requests, **shared
        )
        cpu = time.process_time() - cpu0
    assert done.failed == 0 and getattr(done, "buffered", 0) == 0, done.errors
    return {"results": seen, "cpu_ms_per_request": cpu / done.completed * 1000}


def compare(
    results: list[tuple[str, StreamResult]], truth: dict[str, Any], ttft: float
) -> dict[str, float]:
    added, late, off, itl, send, receive = [], [], [], [], [], []
    for prompt, r in results:
        t = truth[prompt]
        server_ttft = t["writes"][0] - t["received_at"]
        added.append(r.ttft_s - server_ttft)
        send.append(t["received_at"] - (r.first_token_at - r.ttft_s))
        receive.append(r.first_token_at - t["writes"][0])
        late.append(server_ttft - ttft)
        off.append(r.ttft_s - ttft)
        gaps = [b - a for a, b in zip(t["writes"], t["writes"][1:], strict=False)]
        itl += [mine - theirs for mine, theirs in zip(r.itl_s, gaps, strict=True)]
    ms = 1000.0
    return {
        "ttft_off_p50": p(off, 50) * ms,
        "ttft_off_p99": p(off, 99) * ms,
        "late_p50": p(late, 50) * ms,
        "added_p50": p(added, 50) * ms,
        "added_p99": p(added, 99) * ms,
        "itl_err_p50": p([abs(e) for e in itl], 50) * ms,
        "itl_err_p99": p([abs(e) for e in itl], 99) * ms,
        "itl_bias_p50": p(itl, 50) * ms,
        "send_p50": p(send, 50) * ms,
        "receive_p50": p(receive, 50) * ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--ttft", type=float, default=0.060)
    parser.add_argument("--gap", type=float, default=0.015)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", help="measure the pytest_gpufit of this folder instead")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, server_cpu = cpus[0], (cpus[1] if len(cpus) > 1 else None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, str(ROOT / "tests" / "lying_server.py"), "--port", str(port)]
    command += ["--ttft", str(args.ttft), "--gap", str(args.gap)]
    if server_cpu is not None:
        command = ["taskset", "-c", str(server_cpu), *command]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "lying server" in server.stdout.readline()
        os.sched_setaffinity(0, {client_cpu})
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(100):  # the loop binds just after it prints
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        tick = time.process_time()
        sum(range(10**7))
        print(
            f"reference: sum(range(10**7)) took {time.process_time() - tick:.3f} s CPU; load "
            f"average {os.getloadavg()[0]:.1f}; client on CPU {client_cpu}, server on CPU "
            f"{server_cpu}; injected TTFT {args.ttft * 1000:g} ms, gap {args.gap * 1000:g} ms, "
            f"{args.tokens} tokens, {args.requests} requests a level; client from {CLIENT}"
        )
        head = (
            f"{'conc':>4} {'round':>5} {'TTFT-inj p50/p99':>17} {'server late':>11} "
            f"{'client adds p50/p99':>20} {'|ITL err| p50/p99':>18} {'ITL bias':>8} "
            f"{'CPU ms/req':>10} {'send/receive p50':>16}"
        )
        print(head)
        for conc in (int(c) for c in args.concurrency.split(",")):
            for round_ in range(args.rounds):
                got = asyncio.run(level(url, conc, args.requests, args.tokens))
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/truth", timeout=10) as r:
                    truth = {t["prompt"]: t for t in json.loads(r.read())}
                m = compare(got["results"], truth, args.ttft)
                print(
                    f"{conc:>4} {round_ + 1:>5} {m['ttft_off_p50']:>8.2f}/{m['ttft_off_p99']:<8.2f}"
                    f" {m['late_p50']:>11.2f} {m['added_p50']:>10.2f}/{m['added_p99']:<9.2f}"
                    f" {m['itl_err_p50']:>9.2f}/{m['itl_err_p99']:<8.2f} {m['itl_bias_p50']:>8.2f}"
                    f" {got['cpu_ms_per_request']:>10.2f}"
                    f" {m['send_p50']:>7.2f}/{m['receive_p50']:.2f}",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
