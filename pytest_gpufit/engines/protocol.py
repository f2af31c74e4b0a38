"""What every serving engine module provides: the ``Engine`` protocol and the records it uses.

An engine module (``engines/vllm.py``...) holds one object satisfying ``Engine`` as ``ENGINE``:
its name and other spellings, its knobs and the flags it spells them with, the KV-cache types
it takes, its memory plan and the wording of its log, how its start-up log and its running
server say it is this engine, and what the serving gate can read from it. The registry
(``engines/registry.py``) lists the modules; nothing else switches on an engine's name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pytest_gpufit.engines.records import EngineAllocation, EngineFacts, LogSetup

if TYPE_CHECKING:
    from pytest_gpufit.fit.spec import ModelSpec
    from pytest_gpufit.hardware.records import Gpu


@dataclass(frozen=True)
class Knob:
    """One of an engine's knobs: the common field it sets (``EngineKnobs``), how the engine
    spells it in messages, the ``gpufit fit`` options that set it, and their help.

    ``keys`` are the engine's own option names accepted by ``parse_knobs`` as other spellings
    (``ctx_size`` for ``max_model_len``)."""

    field: str
    flag: str
    options: tuple[str, ...] = ()  # the gpufit fit options, short ones first (-c, --ctx-size)
    help: str = ""
    keys: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()  # the values it takes, where it is a choice


@dataclass(frozen=True)
class EngineKnobs:
    """One engine's knobs; ``None`` is the engine's own default."""

    engine: str
    gpu_memory_utilization: float | None = None  # vLLM (0.9); SGLang --mem-fraction-static
    max_model_len: int | None = None  # vLLM --max-model-len; llama.cpp -c
    max_num_seqs: int | None = None  # vLLM (256); llama.cpp -np
    max_num_batched_tokens: int | None = None  # vLLM chunk (8192); llama.cpp -ub
    kv_cache_dtype: str | None = None
    enforce_eager: bool = False  # no CUDA-graph pool
    moe_backend: str | None = None  # vLLM's MXFP4 MoE kernel backend (its padding differs)


@dataclass(frozen=True)
class EnginePlan:
    """The ``engine`` object of ``gpufit fit --json``: what the engine would allocate per GPU.

    Budget-internal: weights, activations (the profiling peak) and runtime (non-torch memory
    charged to the budget); the KV cache takes what remains. Outside the budget, in the margin
    the engine leaves: the CUDA context (``context_bytes_per_gpu``) and the CUDA-graph pool.
    """

    name: str
    tensor_parallel: int
    usable_bytes_per_gpu: int
    budget_bytes_per_gpu: int
    weights_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    activation_bytes_per_gpu: int
    runtime_bytes_per_gpu: int
    cuda_graph_bytes_per_gpu: int
    kv_cache_bytes_per_gpu: int
    kv_cache_tokens: int
    max_concurrency: float
    starts: bool
    reason: str | None
    context_bytes_per_gpu: int = 0
    max_model_len: int = 0
    kv_cache_dtype: str = ""
    usable_source: str = ""
    interconnect: str = ""  # the link the TP >= 2 runtime was planned for (vLLM)
    moe_backend: str = ""  # the MXFP4 MoE backend planned for (vLLM, where experts are MXFP4)

    # The figures in the engine's own log wording (``Engine.log_lines``), set by ``plan``;
    # not part of the JSON, which carries the figures themselves.
    log: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["log"]
        return data

    def log_lines(self) -> list[str]:
        """The figures as the engine's own log words them, to hold side by side."""
        lines = list(self.log)
        if not self.starts:
            lines.append(f"does not start: {self.reason}")
        return lines


class Engine(Protocol):
    """A serving engine, as gpufit plans for it, reads its log and recognises its server."""

    @property
    def name(self) -> str:
        """The registry's name (``vllm``, ``llama.cpp``): ``--engine``, ``requires_fit``."""
        ...

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other names ``--engine`` takes, and the ``owned_by`` its ``/v1/models`` gives."""
        ...

    @property
    def knobs(self) -> tuple[Knob, ...]:
        """The knobs it has, in the order ``--help`` lists them."""
        ...

    @property
    def kv_cache_types(self) -> Mapping[str, str | None]:
        """The KV-cache type names it takes -> the type it stores (None: ``auto``, the
        activation dtype; llama.cpp's ggml types stand for themselves)."""
        ...

    @property
    def split(self) -> str:
        """How it spreads one copy over N GPUs, in words: ``tensor parallel``."""
        ...

    @property
    def parallelism(self) -> Mapping[str, str]:
        """The ways it can use N cards (``tp``, ``pp``, ``dp``, ``ep``: ``engines.parallel``)
        -> how it is launched so, ``{n}`` standing for the count:
        ``{"pp": "--pipeline-parallel-size {n}"}``."""
        ...

    @property
    def split_strategy(self) -> str:
        """Which of ``parallelism`` its own ``plan(..., gpus=n)`` computes (``tp``; llama.cpp's
        layer split is ``pp``)."""
        ...

    def allreduce_kind(self, ranks: int, nvlink: bool, p2p: bool) -> str:
        """The all-reduce its tensor parallel runs over ``ranks`` cards: ``one-shot`` (a custom
        kernel reading peers over P2P) or ``nccl`` (``fit.link_time``)."""
        ...

    def check_split(self, spec: ModelSpec, gpus: int, where: str = ...) -> None:
        """Raise ``GpufitError`` naming ``where`` when it cannot spread ``spec`` over ``gpus``
        GPUs."""
        ...

    def plan(
        self, spec: ModelSpec, precision: str, gpu: Gpu, gpus: int, knobs: EngineKnobs
    ) -> EnginePlan:
        """What it allocates per GPU for ``spec`` at ``precision`` on ``gpus`` such cards."""
        ...

    def log_lines(self, plan: EnginePlan) -> list[str]:
        """``plan``'s figures in its own log's words."""
        ...

    def knobs_for(self, context: int | None, batch: int, model_max: int | None) -> dict[str, Any]:
        """The knobs that serve ``batch`` requests of ``context`` tokens (``requires_fit``)."""
        ...

    # ---- its start-up log ----------------------------------------------------------------

    @property
    def log_marks(self) -> re.Pattern[str]:
        """Words only its log holds: a log matching them is this engine's."""
        ...

    @property
    def command_marks(self) -> re.Pattern[str]:
        """Its launch command; group 1 is the arguments (``vllm serve (.*)``)."""
        ...

    @property
    def setup_keys(self) -> Mapping[str, str]:
        """Its option and config names -> ``LogSetup`` fields."""
        ...

    def read_allocation(self, lines: Sequence[str]) -> EngineAllocation:
        """What its log says it allocated (the last value of each wins)."""
        ...

    def read_setup_line(self, line: str, found: dict[str, Any]) -> str | None:
        """Fill ``found`` (``LogSetup`` fields) from one log line; the version if it says one."""
        ...

    def is_rank_line(self, line: str) -> bool:
        """A line each worker rank logs (its rank counted for the tensor-parallel size)."""
        ...

    def knobs_from_setup(self, setup: LogSetup) -> dict[str, Any]:
        """The knob values (``EngineKnobs`` fields) its log's setup states."""
        ...

    # ---- its running server ---------------------------------------------------------------

    @property
    def probes(self) -> tuple[str, ...]:
        """The GET paths whose answers can say it is this engine."""
        ...

    @property
    def generic(self) -> bool:
        """Its probe answer and log words are shapes others echo (servers copy vLLM's
        ``/version``, SGLang's log repeats vLLM's words): it is tried after the others."""
        ...

    def identify(self, answers: Mapping[str, Any]) -> EngineFacts | None:
        """This engine and its version, when the probe answers (path -> JSON) say so."""
        ...

    @property
    def serves_reads(self) -> tuple[str, ...]:
        """What the ``serves`` check can read from a server of it, in words."""
        ...


def plain_flag(field: str) -> str:
    """The flag a knob is known by when no engine spells it (vLLM's spelling).

    >>> plain_flag("max_model_len")
    '--max-model-len'
    """
    return "--" + field.replace("_", "-")
