"""A real OpenAI-compatible HTTP server that lies: plausible but false data, one mode per lie.

``serving_fakes.FakeOpenAI`` shows faults (a dead server, a 500, a stall, malformed SSE); this
one shows lies that a gate must not believe (issue 18), and tells the truth in mode "honest",
recording what it did, so it is also the known-truth server of
``benchmarks/serving_accuracy.py``. One asyncio loop (in a thread for tests, or a process:
``python tests/lying_server.py --port N --mode M``) serves HTTP/1.1 with keep-alive and
chunked streams; every request is stamped on arrival of its first byte and every write when
it is made (``time.perf_counter()``, CLOCK_MONOTONIC: one clock with the client's on Linux);
``GET /truth`` answers those records.

Modes (``MODES``):
  honest        tokens as asked, ``ttft_s`` to the first and ``gap_s`` between them
  usage         two chunks 50 ms apart, then usage.completion_tokens = max_tokens
  usage_zero    tokens as asked, usage.completion_tokens = 0
  burst         generates at ``gap_s`` but holds the stream and sends it in one write at the
                end (a buffering proxy or ingress in front of an honest server)
  flush         the same, flushed every 8 events (a proxy with a small buffer)
  burst_once    honest, but its first answer of more than one token is held and sent in one
                write (a server or client descheduled once on a busy machine)
  model         every event says model "evil/other-model"
  early_length  two tokens, then finish_reason "length" (and usage 2) for a longer max_tokens
  short         ignores ignore_eos: two tokens and "stop" (a short run)
  logprobs_text logprobs that name the golden tokens " t0", " t1" ... while the text differs
  replay        answers a prompt it saw before at once, from its cache (a burst)
  under_load    honest while one request is in flight (the prompt probe), usage x8 beyond
  silent_first  one token that is part of a character: no content, usage says 1
  silent_one    honest, but a one-token answer is such a token (no text; vLLM's tiny model)
  huge_numbers  /v1/models lists max_model_len as a 400-digit integer
  huge_get      /version answers 300 MB (sent until the client hangs up)
Lies issue 18 did not name, found attacking the checks:
  one_event     holds the answer and sends all its text in one event at the end
  second_choice pads each event with a choice the client did not ask for (index 1): more
                bytes, so an inflated usage would fit them
  after_finish  goes on streaming text after its finish_reason
  burst_after   honest for its first ``honest_requests`` answers (the prompt probes, a first
                level), then every answer held and sent in one write, as ``burst``
  burst_every   after its honest answers, holds every other one and sends it in one write
                (a busy machine's burst now and then, never two in a row)
  model_last    every event says the model asked for, save the usage event at the end
  dribble       holds the stream, then writes its events one by one ``dribble_s`` (0.2 ms)
                apart: a buffering proxy that re-paces what it held
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL = "liar/tiny"
MODES = (
    "honest",
    "usage",
    "usage_zero",
    "burst",
    "flush",
    "burst_once",
    "model",
    "early_length",
    "short",
    "logprobs_text",
    "replay",
    "under_load",
    "silent_first",
    "silent_one",
    "huge_numbers",
    "huge_get",
    "one_event",
    "second_choice",
    "after_finish",
    "burst_after",
    "burst_every",
    "model_last",
    "dribble",
)


@dataclass
class Record:
    """What the server did for one streamed request (perf_counter seconds)."""

    prompt: str
    received_at: float
    writes: list[float] = field(default_factory=list)  # one per token event, when written

    @property
    def ttft_s(self) -> float:
        return self.writes[0] - self.received_at

    @property
    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.writes, self.writes[1:], strict=False)]


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def event(payload: Any) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return chunk(b"data: " + text.encode() + b"\n\n")


class Liar:
    """The server. ``mode`` picks the lie; ``ttft_s`` and ``gap_s`` pace the honest stream."""

    def __init__(
        self,
        mode: str = "honest",
        *,
        ttft_s: float = 0.0,
        gap_s: float = 0.01,
        port: int = 0,
        model: str = MODEL,
        honest_requests: int = 5,
        dribble_s: float = 0.0002,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
        self.mode = mode
        self.ttft_s = ttft_s
        self.gap_s = gap_s
        self.port = port
        self.model = model
        self.honest_requests = honest_requests
        self.dribble_s = dribble_s
        self.records: list[Record] = []
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.cache: dict[str, list[str]] = {}
        self.replays = 0  # answers the replay mode served from its cache
        self.held_once = False  # burst_once: its one held answer went out
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- life -------------------------------------------------------------------------------

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        async with self._server:
            try:
                await self._server.serve_forever()
            except asyncio.CancelledError:
                pass

    def __enter__(self) -> Liar:
        self._thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the lying server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            # One callback, run in the loop's thread: closing the server ends serve() and
            # asyncio.run then closes the loop, so nothing may be scheduled after the close.
            def stop() -> None:
                server.close()
                for task in asyncio.all_tasks(loop):
                    task.cancel()

            try:
                loop.call_soon_threadsafe(stop)
            except RuntimeError:  # the loop closed between the check and the call
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- HTTP -------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                first = await reader.read(1)
                if not first:
                    return
                arrived = time.perf_counter()  # the first byte of the request
                head = first + await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "GET":
                    await self._get(path, writer)
                else:
                    await self._post(json.loads(body or b"{}"), arrived, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    def _json(self, writer: asyncio.StreamWriter, data: Any, status: int = 200) -> None:
        body = json.dumps(data).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def _get(self, path: str, writer: asyncio.StreamWriter) -> None:
        if path == "/v1/models":
            if self.mode == "huge_numbers":
                entry = f'{{"id": "{self.model}", "max_model_len": {"9" * 400}}}'
                body = f'{{"object": "list", "data": [{entry}]}}'.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            else:
                entry = {"id": self.model, "object": "model", "owned_by": "vllm"}
                self._json(writer, {"object": "list", "data": [entry]})
        elif path == "/version" and self.mode == "huge_get":
            size = 300 * 2**20
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {size}\r\n\r\n".encode()
            )
            block = b" " * 2**20
            for _ in range(300):  # until the client hangs up
                writer.write(block)
                await writer.drain()
        elif path == "/truth":  # what it did, for a client in another process to compare
            self._json(writer, [vars(r) for r in self.records])
        elif path in ("/health", "/version"):
            self._json(writer, {"version": "0.32.0"} if path == "/version" else {})
        else:
            self._json(writer, {"detail": "Not Found"}, 404)
        await writer.drain()

    async def _post(
        self, body: dict[str, Any], arrived: float, writer: asyncio.StreamWriter
    ) -> None:
        self.bodies.append(body)
        chat = "messages" in body
        prompt = str(body["messages"][-1]["content"] if chat else body.get("prompt", ""))
        asked = int(body.get("max_tokens") or 16)
        record = Record(prompt, arrived)
        # Kept at once (filled in as it streams): a client may read the last event and go on
        # before this handler's bookkeeping after the stream would have run.
        self.records.append(record)
        self.in_flight += 1
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            await writer.drain()
            await self._stream(body, chat, prompt, asked, record, writer)
        finally:
            self.in_flight -= 1

    def _piece(self, chat: bool, text: str, finish: str | None, **extra: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, **extra}
        if chat:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["text"] = text
        model = "evil/other-model" if self.mode == "model" else self.model
        return {"id": "x", "object": "text_completion", "model": model, "choices": [choice]}

    async def _stream(
        self,
        body: dict[str, Any],
        chat: bool,
        prompt: str,
        asked: int,
        record: Record,
        writer: asyncio.StreamWriter,
    ) -> None:
        mode = self.mode
        if mode == "under_load" and self.in_flight > 1:
            mode = "inflate"
        if mode == "burst_after":
            mode = "honest" if len(self.records) <= self.honest_requests else "burst"
        if mode == "burst_every":
            late = len(self.records) > self.honest_requests and len(self.records) % 2
            mode = "burst" if late else "honest"
        tokens = [f" t{i}" for i in range(asked)]
        said = asked
        finish = "length"
        if mode == "usage":
            tokens, said = tokens[:2], asked
        elif mode == "usage_zero":
            said = 0
        elif mode in ("early_length", "short"):
            tokens = tokens[:2]  # a probe of one token gets one (its count stays true)
            said, finish = len(tokens), "length" if mode == "early_length" else "stop"
        elif mode == "silent_first" or (mode == "silent_one" and asked == 1):
            tokens = [""] * min(asked, 1)
            said = len(tokens)
        elif mode == "inflate":
            tokens = tokens[: max(1, asked // 8)]
            said = asked
        elif mode == "second_choice":
            tokens = tokens[: max(1, asked // 4)]  # a quarter of the tokens claimed: the
            said = asked  # padding's bytes make room for the rest in the byte bound
        gap = 0.05 if mode == "usage" else self.gap_s
        held: list[bytes] = []
        cached = self.cache.get(prompt) if mode == "replay" else None
        if cached is not None:
            tokens = cached  # the old answer at once: no prefill, no decode
            self.replays += 1
        hold = mode in ("burst", "flush", "dribble") or cached is not None
        if mode == "burst_once" and asked > 1 and not self.held_once:
            hold = self.held_once = True
        loop = asyncio.get_running_loop()
        due = record.received_at + self.ttft_s
        for i, text in enumerate(tokens):
            if cached is None:
                # Paced on the server's own clock from the request's arrival, so lateness of
                # one write does not add up (the record says how late each one was).
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                due += gap
            extra: dict[str, Any] = {}
            if mode == "logprobs_text" and body.get("logprobs"):
                golden = f" t{i}"
                extra["logprobs"] = {
                    "tokens": [golden],
                    "token_logprobs": [-0.1],
                    "top_logprobs": [{golden: -0.1, " x": -2.5}],
                }
                text = f" w{i}"  # the streamed text says something else
            last = i == len(tokens) - 1
            data = event(self._piece(chat, text, finish if last else None, **extra))
            if mode == "second_choice":
                padded = self._piece(chat, text, finish if last else None, **extra)
                padded["choices"].append({**padded["choices"][0], "index": 1, "text": " pad" * 4})
                data = event(padded)
            if mode == "after_finish" and last:
                data += event(self._piece(chat, " more text", None))
            if mode == "one_event":
                if not last:
                    continue
                data = event(self._piece(chat, "".join(tokens), finish))
            if hold:
                held.append(data)
                if mode == "flush" and len(held) == 8:
                    writer.write(b"".join(held))
                    held.clear()
                    await writer.drain()
            else:
                writer.write(data)
                record.writes.append(time.perf_counter())
                await writer.drain()
        _ = loop
        if mode == "dribble":  # what it held, one event a write, a fixed small gap apart
            for data in held:
                writer.write(data)
                record.writes.append(time.perf_counter())
                await writer.drain()
                await asyncio.sleep(self.dribble_s)
            held.clear()
        if mode == "replay":
            self.cache.setdefault(prompt, tokens)
        usage = {"prompt_tokens": len(prompt.split()) + 1, "completion_tokens": said}
        usage["total_tokens"] = usage["prompt_tokens"] + said
        said_model = self._piece(chat, "", None)["model"]
        if mode == "model_last":  # only the last event, the one that carries the usage
            said_model = "evil/other-model"
        tail = event({"id": "x", "model": said_model, "choices": [],
                      "usage": usage})  # fmt: skip
        tail += event("[DONE]") + chunk(b"")
        writer.write(b"".join(held) + tail)
        if hold:
            record.writes.append(time.perf_counter())
        await writer.drain()


LAUNCHER = """
import http.client, subprocess, sys, time
from pathlib import Path
port, how = sys.argv[1], {how!r}
serve = [sys.executable, {liar!r}, "--port", port]
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if how == "double":
    # A double fork: the server's parent exits at once, so no process of the launch is its
    # ancestor (as a process that took the port before the launched server bound it).
    code = (
        "import subprocess, sys; p = subprocess.Popen(sys.argv[1:], start_new_session=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"
    )
    pid = int(subprocess.run([sys.executable, "-c", code, *serve], capture_output=True,
                             text=True).stdout)
else:
    pid = subprocess.Popen(serve, start_new_session=how == "setsid", **quiet).pid
Path({pidfile!r}).write_text(str(pid))
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=1)
        c.request("GET", "/v1/models")
        if c.getresponse().status == 200:
            break
    except OSError:
        time.sleep(0.05)
time.sleep({linger})
"""


def launcher(how: str, pidfile: Path, linger: float) -> str:
    """A launch command's script (argument: the port) that starts this server in the background
    (``how``: "child" in its group, "setsid" in a session of its own, "double" forked twice so
    it is nobody's child), writes its pid to ``pidfile``, waits until it answers, stays
    ``linger`` seconds and exits 0: a daemonising wrapper, or a squatter while it lingers."""
    liar = str(Path(__file__).resolve())
    return LAUNCHER.format(how=how, liar=liar, pidfile=str(pidfile), linger=linger)


def main() -> None:
    parser = argparse.ArgumentParser(description="a lying OpenAI-compatible server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", default="honest", choices=MODES)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--gap", type=float, default=0.01)
    args = parser.parse_args()
    liar = Liar(args.mode, ttft_s=args.ttft, gap_s=args.gap, port=args.port)
    print(f"lying server ({args.mode}) on {args.port}", flush=True)
    asyncio.run(liar.serve())


if __name__ == "__main__":
    main()
