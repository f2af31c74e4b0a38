"""A small fake OpenAI-compatible server for the faults a real server cannot show on demand.

It is a real HTTP server on 127.0.0.1 (a free port), run in a thread by the tests, or as a
process (``python tests/serving_fakes.py --port N``) for the launched-server tests. ``mode``
picks what the completions endpoints do; only loopback traffic, every wait bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fake/tiny"

# vLLM's words and shapes (an engine that dies streams this inside a 200 response).
VLLM_STREAM_ERROR = {
    "error": {
        "message": "Unsupported CPU attention configuration",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}
VLLM_NOT_FOUND = {
    "error": {
        "message": "The model `wrong/model` does not exist.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
}
METRICS = (
    "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
    "# TYPE vllm:cache_config_info gauge\n"
    'vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",'
    'gpu_memory_utilization="0.15",kv_cache_size_tokens="11264",num_cpu_blocks="None",'
    'num_gpu_blocks="704"} 1.0\n'
)


# The gap before each token: a real server's steps are milliseconds apart, and a stream that
# arrives all at once is refused as buffered where its pacing is judged (GenRequest.paced).
PACE_S = 0.01


class FakeOpenAI(ThreadingHTTPServer):
    """The server: ``mode``, ``tokens`` (None: as asked), ``delay_s`` (the gap before each token),
    ``fail_after`` steer it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0, mode: str = "ok") -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.mode = mode
        self.tokens: int | None = None
        self.delay_s = PACE_S
        self.fail_after: int | None = None
        self.release = threading.Event()  # ends a stalled stream at teardown
        self.bodies: list[dict[str, Any]] = []
        self.keep_alive = False  # streams end with a zero chunk, the connection stays open
        self.connections = 0
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-stream is what the fault tests do: no traceback for it."""
        error = sys.exc_info()[1]
        if not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        with self.lock:
            self.connections += 1
        return super().get_request()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeOpenAI
    # TCP_NODELAY, as uvicorn (asyncio), llama.cpp and Go servers set it: with Nagle on, each
    # small event waits for the ACK of the one before and the stream arrives in bursts.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            entry = {"id": MODEL, "object": "model", "owned_by": "vllm", "max_model_len": 512}
            self._json(200, {"object": "list", "data": [entry]})
        elif self.path == "/health":
            self._json(200, {})
        elif self.path == "/version":
            self._json(200, {"version": "0.32.0"})
        elif self.path == "/metrics":
            body = METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._json(404, {"detail": "Not Found"})

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        self._chunk(f"data: {text}\n\n".encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        server = self.server
        with server.lock:
            server.bodies.append(body)
            count = len(server.bodies)
        mode = server.mode
        if server.fail_after is not None and count > server.fail_after:
            mode = "500"
        if mode == "401":
            return self._json(401, {"error": {"message": "Invalid API key", "code": 401}})
        if mode == "500":
            return self._json(500, {"error": {"message": "Internal Server Error", "code": 500}})
        if body.get("model") != MODEL:
            return self._json(404, VLLM_NOT_FOUND)
        unknown = ("ignore_eos",) + (("generation_config",) if mode == "reject_both" else ())
        if mode in ("reject_ignore_eos", "reject_both") and any(k in body for k in unknown):
            # transformers serve's answer to a field it does not know.
            field = next(k for k in unknown if k in body)
            detail = f"Unexpected fields in the request: {{'{field}'}}"
            return self._json(422, {"detail": detail})
        if mode == "auth" and self.headers.get("Authorization") != "Bearer sk-test":
            return self._json(401, {"error": {"message": "Invalid API key", "code": 401}})
        self.send_response(200)
        self.send_header(
            "Content-Type", "application/json" if mode == "not_sse" else "text/event-stream"
        )
        self.send_header("Transfer-Encoding", "chunked")
        if not server.keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = not server.keep_alive
        self._stream(body, mode)

    def _stream(self, body: dict[str, Any], mode: str) -> None:
        server = self.server
        chat = "messages" in body
        asked = int(body.get("max_tokens") or 16)
        tokens = server.tokens if server.tokens is not None else asked
        if mode == "short":
            tokens = min(tokens, 10)
        if mode == "error_event":
            self._event(self._piece(chat, " the", None, body))
            self._event(VLLM_STREAM_ERROR)
            return self._end()
        if mode == "malformed":
            self._event('{"choices": [{"text": "a"')
            return self._end()
        if mode in ("bad_shape", "not_object"):
            self._event('{"choices": "abc"}' if mode == "bad_shape" else "[1, 2]")
            return self._end()
        for i in range(tokens):
            if server.delay_s:
                time.sleep(server.delay_s)
            self._event(self._piece(chat, f" t{i}", None, body))
            if mode == "stall":
                server.release.wait(timeout=10)
                return self._end()
            if mode == "drop" and i == 1:
                # A partial chunk, then the socket closes: a crash mid-stream.
                self.wfile.write(b'40\r\ndata: {"cho')
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
        finish = "length" if tokens >= asked else "stop"
        if mode == "no_finish":
            return self._end()
        self._event(self._piece(chat, "", finish, body))
        if mode != "no_usage":
            prompt = len(str(body.get("prompt") or body.get("messages")).split()) + 1
            usage = {"prompt_tokens": prompt, "completion_tokens": tokens}
            usage["total_tokens"] = prompt + tokens
            self._event({"id": "x", "choices": [], "usage": usage})
        self._event("[DONE]")
        self._end()

    def _piece(self, chat: bool, text: str, finish: str | None, body: dict[str, Any]) -> Any:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["text"] = text
        if text and body.get("logprobs") and not chat:
            top = {text: -0.1, " x": -2.5}
            choice["logprobs"] = {"tokens": [text], "token_logprobs": [-0.1], "top_logprobs": [top]}
        return {"id": "x", "object": "text_completion", "choices": [choice]}

    def _end(self) -> None:
        try:
            self._chunk(b"")
        except OSError:
            pass


def main() -> None:
    """Run as a launched server: ``--child`` leaves a grandchild in the group, ``--ignore-term``
    ignores SIGTERM (so stop must escalate), ``--start-delay`` waits before listening."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--start-delay", type=float, default=0.0)
    args = parser.parse_args()
    if args.ignore_term:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.child:
        code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
        child = subprocess.Popen([sys.executable, "-c", code])
        print(f"child pid {child.pid}", flush=True)
    print(f"fake server pid {os.getpid()} starting on {args.port}", flush=True)
    time.sleep(args.start_delay)
    with FakeOpenAI(args.port) as server:
        print("ready", flush=True)
        while True:
            time.sleep(0.5)
            if server.release.is_set():
                break


if __name__ == "__main__":
    main()
