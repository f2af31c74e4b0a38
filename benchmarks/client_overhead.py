"""Client overhead: what gpufit's load generator costs per request and what it adds to TTFT.

A local server that answers instantly (a raw asyncio HTTP/1.1 server in its own process,
pinned to another core where there is one) streams ``--tokens`` SSE chunks per request and
stamps its first chunk with its ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux, one clock
for both processes). The load generator (``pytest_gpufit.serving.load.run_level``, pinned to
one core) runs closed-loop levels; per level this prints requests/s, the client's CPU time per
request, and the delay from the server writing the first chunk to the client timing it (the
error the client adds to TTFT), p50/p99. Targets (issue 11): >= 500 streamed requests/s on one
core, < 1 ms added to TTFT at p99.

    python benchmarks/client_overhead.py --requests 2000 --concurrency 1,8,32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def event(payload: object) -> bytes:
    return chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


class Instant(asyncio.Protocol):
    """Answers every POST at once with a streamed completion; keeps the connection alive."""

    tokens = 16

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.respond(head.split(b" ")[1])

    def respond(self, path: bytes) -> None:
        if not path.endswith(b"/completions"):
            body = b'{"object": "list", "data": [{"id": "m"}]}'
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            return
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        first = event({"choices": [{"index": 0, "text": f"{time.perf_counter():.9f}"}]})
        parts = [head, first]
        for _ in range(self.tokens - 1):
            parts.append(event({"choices": [{"index": 0, "text": " x"}]}))
        parts.append(event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}))
        usage = {"prompt_tokens": 8, "completion_tokens": self.tokens, "total_tokens": 24}
        parts.append(event({"choices": [], "usage": usage}))
        parts.append(chunk(b"data: [DONE]\n\n") + chunk(b""))
        self.transport.write(b"".join(parts))


def serve(port: int, tokens: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    Instant.tokens = tokens

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Instant, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def percentile(values: list[float], q: float) -> float:
    from pytest_gpufit.serving.load import percentile as pct

    return pct(values, q)


async def measure(url: str, concurrency: int, requests: int, tokens: int) -> dict[str, float]:
    from pytest_gpufit.serving.client import GenRequest, OpenAIClient
    from pytest_gpufit.serving.load import Outcome, run_level

    request = GenRequest("m", "hello", max_tokens=tokens, timeout_s=30)
    stamps: list[float] = []
    async with OpenAIClient(url, max_connections=max(concurrency, 1)) as client:
        # Warm the connections, then time a level.
        await run_level(client, [request], concurrency=concurrency, max_requests=concurrency * 2)
        original = client.stream

        async def stamped(req: GenRequest) -> object:
            result = await original(req)
            stamps.append(result.first_token_at - float(result.text.split(" ", 1)[0]))
            return result

        client.stream = stamped  # type: ignore[method-assign]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        level = await run_level(client, [request], concurrency=concurrency, max_requests=requests)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert level.failed == 0, level.errors
    _ = Outcome
    return {
        "requests_per_s": level.completed / wall,
        "cpu_ms_per_request": cpu / level.completed * 1000,
        "added_ttft_p50_ms": percentile(stamps, 50) * 1000,
        "added_ttft_p99_ms": percentile(stamps, 99) * 1000,
        "ttft_p99_ms": level.ttft_ms.p99 if level.ttft_ms else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.tokens, args.cpu)
        return
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, server_cpu = cpus[0], (cpus[1] if len(cpus) > 1 else None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, __file__, "--serve", str(port), "--tokens", str(args.tokens)]
    if server_cpu is not None:
        command += ["--cpu", str(server_cpu)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        os.sched_setaffinity(0, {client_cpu})
        # A CPU-speed reference, so figures from a slow or shared core can be scaled.
        tick = time.process_time()
        sum(range(10**7))
        reference = time.process_time() - tick
        load = os.getloadavg()[0]
        print(f"reference: sum(range(10**7)) took {reference:.3f} s CPU; load average {load:.1f}")
        print(
            f"client on CPU {client_cpu}, instant server on CPU {server_cpu}; "
            f"{args.tokens} streamed chunks per request, {args.requests} requests per level"
        )
        print(f"{'conc':>5} {'req/s':>8} {'cpu ms/req':>11} {'added TTFT p50/p99 ms':>22}")
        for conc in (int(c) for c in args.concurrency.split(",")):
            m = asyncio.run(
                measure(f"http://127.0.0.1:{port}/v1", conc, args.requests, args.tokens)
            )
            print(
                f"{conc:>5} {m['requests_per_s']:>8.0f} {m['cpu_ms_per_request']:>11.3f} "
                f"{m['added_ttft_p50_ms']:>10.3f} / {m['added_ttft_p99_ms']:.3f}"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
