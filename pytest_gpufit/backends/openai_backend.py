"""The openai backend: a suite target served by an OpenAI-compatible server over HTTP.

``Served`` is one target's server: launched by gpufit (``launch:``) or already running
(``endpoint:``). It answers what the suite checks ask (models, a streamed request, a sized
prompt, load levels, logs) and hides the HTTP client and asyncio behind plain calls, so the
checks (``pytest_gpufit.suites.serving_checks``) stay free of it. Imports aiohttp and httpx: load it
through ``pytest_gpufit.backends.load_backend("openai")``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.serving.client import GenRequest, OpenAIClient, ServedModel, StreamResult
from pytest_gpufit.serving.errors import EndpointError
from pytest_gpufit.serving.facts import (
    EngineAllocation,
    EngineFacts,
    engine_from_command,
    parse_engine_log,
)
from pytest_gpufit.serving.load import LevelResult, Slo, format_level, run_load
from pytest_gpufit.serving.prompts import SizedPrompt, prompt_keys, sized_prompt
from pytest_gpufit.serving.server import LaunchedServer, log_tail

T = TypeVar("T")

# How long a request may wait for the next byte before it counts as stalled.
STALL_S = 60.0


AB_VARS = "GPUFIT_AB_VARS"  # set by gpufit ab on each side's run: {"image": "vllm:0.8", ...}


def launch_command(command: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """A launch command with ``{python}`` (this interpreter, so a suite can run a module of the
    same environment) and, under ``gpufit ab``, each side's ``{KEY}`` filled in.

    >>> launch_command(["{python}", "-m", "x", "{image}"], {AB_VARS: '{"image": "v:2"}'})[1:]
    ['-m', 'x', 'v:2']
    """
    environ = os.environ if environ is None else environ
    values = {"python": sys.executable}
    raw = environ.get(AB_VARS)
    if raw:
        values.update({str(k): str(v) for k, v in json.loads(raw).items()})
    out = []
    for arg in command:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


class Served:
    """One target's server and what it said about itself; ``stop()`` ends a launched one."""

    def __init__(
        self, target: Any, cuda_visible_devices: str | None = None, log_dir: Path | None = None
    ) -> None:
        self.target = target
        self.cuda_visible_devices = cuda_visible_devices
        self.log_dir = log_dir  # where a launched server's log goes: the run's own folder
        self.server: LaunchedServer | None = None
        self.base_url = str(target.endpoint)
        self.model = ""
        self.models: tuple[ServedModel, ...] = ()
        self.facts = EngineFacts(None, None, None)
        self.startup_s: float | None = None
        self._prompts: dict[int, SizedPrompt] = {}
        self.stall_s = STALL_S
        # One run of unique prompts' keys for every check of this target: no prompt that
        # throughput sent comes again in load.
        self.keys = prompt_keys()

    # ---- life ----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path | None:
        return self.server.log_path if self.server is not None else None

    def start(self) -> Served:
        """Launch (when the target says so), wait until ready, and find the served model."""
        launch = self.target.launch
        if launch is not None:
            command = launch_command(launch.command)
            self.server = LaunchedServer(
                command,
                cwd=launch.cwd,
                env=dict(launch.env),
                cuda_visible_devices=self.cuda_visible_devices,
                ready_timeout_s=launch.ready_timeout_s,
                log_dir=self.log_dir,
            )
            self.base_url = self.base_url.replace("{port}", str(self.server.port))
            began = time.monotonic()
            self.server.start()  # ServerStartError names the log and quotes its end
            self.startup_s = time.monotonic() - began
        try:
            self.models = self.run(lambda c: c.list_models())
            self.model = self._pick_model()
            self.facts = self.run(lambda c: c.engine_facts())
            if self.facts.engine is None and launch is not None:
                # What gpufit launched names the engine where the server does not say.
                self.facts = engine_from_command(launch.command)
        except BaseException:
            self.stop()
            raise
        return self

    def _pick_model(self) -> str:
        names = [m.id for m in self.models]
        wanted = self.target.served_model
        if wanted is not None:
            if wanted not in names:
                raise EndpointError(
                    f"{self.base_url}: served_model {wanted!r} is not served; GET /v1/models "
                    f"lists {', '.join(map(repr, names)) or 'nothing'}",
                    "model",
                )
            return str(wanted)
        if len(names) != 1:
            raise EndpointError(
                f"{self.base_url}: GET /v1/models lists {len(names)} models "
                f"({', '.join(map(repr, names)) or 'none'}); name one with served_model:",
                "model",
            )
        return names[0]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def exited(self) -> str | None:
        """Why a launched server is no longer the one the checks measure, or None while it is:
        it exited after becoming ready ('the server exited with code N after becoming ready',
        and who still answers on its port), or its port now belongs to another process. The
        launched server's own account (``LaunchedServer.check``: its exit watcher's, not a
        poll that may run before the exit is seen)."""
        return self.server.check() if self.server is not None else None

    def log_text(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines) if self.log_path is not None else ""

    def forbidden(self) -> list[str]:
        """Log lines holding a ``launch.log_forbid`` text, each quoted once."""
        launch = self.target.launch
        if launch is None or not launch.log_forbid or self.log_path is None:
            return []
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return []
        hits = []
        for line in text.splitlines():
            for pattern in launch.log_forbid:
                if pattern in line or _matches(pattern, line):
                    hits.append(f"log_forbid {pattern!r} seen: {line.strip()[:300]}")
                    break
        return hits

    def allocation(self) -> EngineAllocation | None:
        if self.log_path is None:
            return None
        try:
            return parse_engine_log(self.log_path.read_text("utf-8", "replace"))
        except OSError:
            return None

    def max_model_len(self) -> int | None:
        return next((m.max_model_len for m in self.models if m.id == self.model), None)

    def engine_text(self) -> str | None:
        """``vllm 0.32.0`` (engine and version as the server says), or the engine alone."""
        if self.facts.engine is None:
            return None
        return " ".join(p for p in (self.facts.engine, self.facts.version) if p)

    # ---- requests ------------------------------------------------------------------------

    def run(self, call: Callable[[OpenAIClient], Coroutine[Any, Any, T]]) -> T:
        """Run ``call(client)`` on a fresh client in its own event loop."""

        async def go() -> T:
            async with OpenAIClient(
                self.base_url, api_key_env=self.target.api_key_env, stall_s=self.stall_s
            ) as client:
                return await call(client)

        return asyncio.run(go())

    def request(self, prompt: str, max_tokens: int, **kwargs: Any) -> GenRequest:
        return GenRequest(model=self.model, prompt=prompt, max_tokens=max_tokens, **kwargs)

    def stream(self, request: GenRequest) -> StreamResult:
        return self.run(lambda c: c.stream(request))

    def streams(self, requests: Sequence[GenRequest]) -> list[StreamResult]:
        """Several requests one after another on one client (ignore_eos learned once)."""

        async def go(client: OpenAIClient) -> list[StreamResult]:
            return [await client.stream(r) for r in requests]

        return self.run(go)

    def prompt(self, tokens: int, timeout_s: float = 120.0) -> SizedPrompt:
        """A prompt the server counts as ``tokens`` tokens (built once per length)."""
        if tokens not in self._prompts:
            self._prompts[tokens] = self.run(
                lambda c: sized_prompt(c, self.model, tokens, timeout_s=timeout_s)
            )
        return self._prompts[tokens]

    def load(
        self,
        request: GenRequest,
        concurrency: Sequence[int],
        rates: Sequence[float],
        requests: int,
        max_seconds: float,
        slo: Slo | None,
        progress: Callable[[str], None] | None,
        prompts: str = "unique",
    ) -> tuple[LevelResult, ...]:
        if prompts not in ("unique", "shared"):
            raise GpufitError(f"prompts is {prompts!r}; expected unique or shared")

        def heard(level: LevelResult) -> None:
            if progress is not None:
                progress(f"gpufit load {self.target.name}: {format_level(level)}")

        return self.run(
            lambda c: run_load(
                c,
                [request],
                concurrency=concurrency,
                rates=rates,
                max_requests=requests,
                max_seconds=max_seconds,
                slo=slo,
                on_level=heard,
                prompts="shared" if prompts == "shared" else "unique",
                keys=self.keys,
            )
        )


def _matches(pattern: str, line: str) -> bool:
    """A log_forbid text that is a regular expression (invalid ones match as plain text)."""
    try:
        return re.search(pattern, line) is not None
    except re.error:
        return False


def start(target: Any, cuda_visible_devices: str | None, log_dir: Path | None = None) -> Served:
    """The running server of ``target``; every failure is a GpufitError with the log named.
    A launched server logs to a new file in ``log_dir`` (the run's own folder)."""
    served = Served(target, cuda_visible_devices, log_dir)
    try:
        return served.start()
    except GpufitError as error:
        where = f" (server log: {served.log_path})" if served.log_path is not None else ""
        text = str(error)
        raise GpufitError(text if "log" in text or not where else text + where) from None


OutOfMemory = MemoryError  # an HTTP client never sees the server's device fill up


def free_device(device: str) -> None:
    """Nothing to free in this process: the server owns its device."""
