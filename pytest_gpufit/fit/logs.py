"""``gpufit calibrate``: an engine's own log beside the fit engine's plan for the same setup.

The log says what the engine allocated and, mostly, how it was started (``engines.logs``
reads both, in each engine's words); this module finds the model and precision that setup
names, asks ``engines.planning.plan`` for the same card, tensor-parallel size and knobs, and
sets each figure the log reports beside the prediction. The serving gate's ``serves`` check
uses the same comparison for the server it launched.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gpufit.engines.knobs import parse_knobs
from pytest_gpufit.engines.logs import read_engine_log
from pytest_gpufit.engines.planning import plan
from pytest_gpufit.engines.protocol import EngineKnobs, EnginePlan
from pytest_gpufit.engines.records import EngineLog
from pytest_gpufit.engines.registry import DEFAULT as DEFAULT_ENGINE
from pytest_gpufit.engines.registry import all_engines
from pytest_gpufit.engines.registry import engine as registered
from pytest_gpufit.engines.vllm import BLOCK_SIZE as VLLM_BLOCK_SIZE
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.estimate import check_precision
from pytest_gpufit.fit.names import variant_note
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.hardware.catalog import catalog_gpu
from pytest_gpufit.units import GIB

if TYPE_CHECKING:
    from pytest_gpufit.fit.spec import ModelSpec
    from pytest_gpufit.hardware.records import Gpu

MAX_LOG_BYTES = 64 * 2**20  # a server log is megabytes; more is the wrong file

# Name suffixes of quantized repackagings -> the precision they hold (checked in this order).
_QUANT_SUFFIX = (
    (re.compile(r"[-_.](?:quantized\.)?w8a8\b", re.I), "int8"),
    (
        re.compile(
            r"[-_.](?:quantized\.)?w4a16\b|[-_.](?:awq|gptq)(?:[-_.]int4|[-_.]4bit)?\b", re.I
        ),
        "int4",
    ),
    (re.compile(r"[-_.]fp8(?:[-_.]dynamic)?\b", re.I), "fp8"),
    (re.compile(r"[-_.]nvfp4\b", re.I), "nvfp4"),
)
_STRIP = re.compile(
    r"[-_.](?:quantized\.)?(?:w8a8|w4a16|awq|gptq|fp8|nvfp4|int4|int8|dynamic|4bit)\b", re.I
)
# The engines' words for a precision (vLLM --quantization / --dtype, SGLang, llama.cpp).
_DTYPES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "float": "fp32",
    "bf16": "bf16",
    "fp16": "fp16",
    "fp32": "fp32",
}
_QUANT_METHODS = {
    "fp8": "fp8",
    "awq": "int4",
    "gptq": "int4",
    "awq_marlin": "int4",
    "gptq_marlin": "int4",
    "mxfp4": "mxfp4",
    "compressed-tensors": "stored",
    "modelopt": None,
}


@dataclass(frozen=True)
class Figure:
    """One figure the log reports and the plan's prediction of it."""

    name: str
    unit: str
    logged: float
    predicted: float
    line: str | None = None
    key: str = ""  # a metric name: weights_gib, kv_cache_tokens...

    @property
    def error(self) -> float | None:
        """Prediction / log - 1 (0.02 is 2% high); None when the log says 0 (no ratio)."""
        return self.predicted / self.logged - 1 if self.logged else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "log": self.logged,
            "predicted": round(self.predicted, 4),
            "error": None if self.error is None else round(self.error, 4),
            "line": self.line,
        }


@dataclass(frozen=True)
class Calibration:
    """One log held against the plan for the setup it states."""

    source: str
    engine: str
    model: str
    precision: str
    tensor_parallel: int
    gpu: str | None
    knobs: dict[str, Any]
    figures: tuple[Figure, ...]
    notes: tuple[str, ...] = ()
    not_compared: tuple[str, ...] = ()
    plan: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "log": self.source,
            "engine": self.engine,
            "model": self.model,
            "precision": self.precision,
            "tensor_parallel": self.tensor_parallel,
            "gpu": self.gpu,
            "knobs": self.knobs,
            "figures": [f.to_dict() for f in self.figures],
            "notes": list(self.notes),
            "not_compared": list(self.not_compared),
            "plan": self.plan,
        }


# ---- what the log names -------------------------------------------------------------------

_HF_CACHE = re.compile(r"models--([^/]+)--([^/]+)")


def model_candidates(text: str) -> list[str]:
    """Names to try for a log's model path or id, most specific first.

    >>> model_candidates("/models/models--meta-llama--Meta-Llama-3.1-8B-Instruct/snapshots/0e9")
    ['meta-llama/Meta-Llama-3.1-8B-Instruct', 'Meta-Llama-3.1-8B-Instruct']
    >>> model_candidates("neuralmagic/Meta-Llama-3.1-70B-Instruct-quantized.w8a8")[-1]
    'Meta-Llama-3.1-70B-Instruct'
    """
    text = text.strip().rstrip("/")
    found: list[str] = []
    if match := _HF_CACHE.search(text):
        found += [f"{match.group(1)}/{match.group(2)}", match.group(2)]
    else:
        found.append(text)
        parts = [p for p in text.split("/") if p]
        if len(parts) >= 2:
            found.append("/".join(parts[-2:]))
        if parts:
            found.append(parts[-1])
    stripped = [_STRIP.sub("", name) for name in found]
    return list(dict.fromkeys(found + [s for s in stripped if s]))


def precision_from(setup_dtype: str | None, quantization: str | None, name: str) -> str | None:
    """The precision a log's setup implies: a quantized name or method, else the dtype.

    >>> precision_from("bfloat16", None, "org/Llama-3.1-70B-Instruct-quantized.w8a8")
    'int8'
    >>> precision_from("bfloat16", None, "meta-llama/Llama-3.1-8B"), precision_from(None, None, "x")
    ('bf16', None)
    """
    for pattern, precision in _QUANT_SUFFIX:
        if pattern.search(name):
            return precision
    if quantization and quantization.lower() in _QUANT_METHODS:
        method = _QUANT_METHODS[quantization.lower()]
        if method:
            return method
    if setup_dtype:
        return _DTYPES.get(setup_dtype.lower())
    return None


def resolve_log_model(
    named: str | None, override: str | None, base: Path | None = None
) -> tuple[ModelSpec, list[str]]:
    """The model spec for a log: ``--model`` wins, else what the log names (a shipped id, a
    variant of one, or a folder that exists here); notes say how it was found."""
    if override:
        return load_spec(override, base), []
    if not named:
        raise GpufitError("the log names no model; give --model ID|FOLDER")
    tried = model_candidates(named)
    for candidate in tried:
        try:
            spec = load_spec(candidate, base)
        except GpufitError:
            continue
        notes = [] if candidate == named else [f"model {named!r} read as {candidate!r}"]
        if note := variant_note(candidate):
            notes.append(note)
        return spec, notes
    raise GpufitError(
        f"the log's model {named[:120]!r} is not a shipped id nor a folder here "
        f"(tried {', '.join(repr(t) for t in tried[:4])}); give --model ID|FOLDER"
    )


def knobs_from(log: EngineLog, engine: str) -> EngineKnobs:
    """The engine knobs the log states, checked as the CLI checks them."""
    raw = registered(engine).knobs_from_setup(log.setup)
    stated = log.allocation.concurrency_tokens
    if raw.get("max_model_len") is None and stated:
        # "Maximum concurrency for 8,192 tokens per request" is vLLM stating its max_model_len:
        # planned at the model's maximum instead, that figure would be held against another.
        raw["max_model_len"] = stated
    try:
        return parse_knobs(engine, **{k: v for k, v in raw.items() if v is not None})
    except GpufitError as error:
        raise GpufitError(f"the log's setup: {error}") from None


# ---- the comparison -------------------------------------------------------------------------


def compare(
    log: EngineLog, plan: EnginePlan, card_known: bool, card_note: str | None = None
) -> tuple[list[Figure], list[str]]:
    """Each figure the log reports beside the plan's; figures that need the card are compared
    only when the card is known (``card_known``), else listed as not compared (``card_note``:
    why, when a card was given)."""
    a = log.allocation
    line = {  # the log line each figure came from, for the reader
        key: next((ln for ln in a.lines if word in ln), None)
        for key, word in (
            ("weights", "took"),
            ("weights_sg", "mem usage"),
            ("weights_lc", "model buffer"),
            ("kv", "KV"),
            ("tokens", "tokens"),
            ("conc", "concurrency"),
            ("blocks", "blocks"),
        )
    }
    figures: list[Figure] = []
    skipped: list[str] = []
    card_figures: list[Figure] = []
    if a.weights_gib is not None:
        weights = Figure(
            "weights per GPU",
            "GiB",
            a.weights_gib,
            plan.weights_bytes_per_gpu / GIB,
            line["weights"] or line["weights_sg"] or line["weights_lc"],
            "weights_gib",
        )
        # Triton's MXFP4 layout depends on the GPU generation (Hopper swizzles the experts).
        (card_figures if plan.moe_backend == "triton" else figures).append(weights)
    tokens = a.kv_cache_tokens
    if tokens is None and a.kv_cache_blocks is not None:
        tokens = a.kv_cache_blocks * (log.setup.block_size or VLLM_BLOCK_SIZE)
    if a.kv_cache_gib is not None and tokens:
        # The log's own KV memory over its own token count: bytes per token per GPU, card-free.
        implied = a.kv_cache_gib * GIB / tokens  # memory per GPU, tokens per setup
        figures.append(
            Figure(
                "KV bytes per token per GPU",
                "B",
                round(implied, 1),
                plan.kv_bytes_per_token_per_gpu,
                line["kv"],
                "kv_bytes_per_token",
            )
        )
    if a.kv_cache_gib is not None:
        card_figures.append(
            Figure(
                "KV cache memory per GPU",
                "GiB",
                a.kv_cache_gib,
                plan.kv_cache_bytes_per_gpu / GIB,
                line["kv"],
                "kv_cache_gib",
            )
        )
    if tokens is not None:
        card_figures.append(
            Figure(
                "KV cache size",
                "tokens",
                tokens,
                plan.kv_cache_tokens,
                line["tokens"] or line["blocks"],
                "kv_cache_tokens",
            )
        )
    if a.max_concurrency is not None and a.concurrency_tokens not in (None, plan.max_model_len):
        skipped.append(
            f"max concurrency at {a.concurrency_tokens} tokens: the plan runs at "
            f"{plan.max_model_len:,} tokens per request (the log's setup says so)"
        )
    elif a.max_concurrency is not None:
        card_figures.append(
            Figure(
                f"max concurrency at {a.concurrency_tokens} tokens",
                "x",
                a.max_concurrency,
                plan.max_concurrency,
                line["conc"],
                "max_concurrency",
            )
        )
    if card_known:
        figures += card_figures
    else:
        why = card_note or "depends on the card; give --gpu CARD"
        skipped += [f"{f.name}: {why}" for f in card_figures]
    return figures, skipped


def hold_against_plan(
    log: EngineLog, spec: ModelSpec, precision: str, gpu: Gpu
) -> tuple[EnginePlan, list[Figure]]:
    """The plan for the setup a launched server's log states (its engine, TP and knobs; vLLM's
    profile when the log does not name the engine) on the judged card, and each figure the
    log reports beside it: what the serving gate records."""
    engine = log.setup.engine or DEFAULT_ENGINE
    seen = log.setup.ranks_seen if (log.setup.ranks_seen or 0) > 1 else None
    tp = log.setup.tensor_parallel or seen or 1  # as calibrate reads it: N ranks logging, TP N
    the_plan = plan(spec, precision, gpu, tp, knobs_from(log, engine))
    figures, _ = compare(log, the_plan, card_known=True)
    return the_plan, figures


def calibrate_text(
    text: str,
    source: str,
    model: str | None = None,
    gpu: Gpu | None = None,
    precision: str | None = None,
    tensor_parallel: int | None = None,
    base: Path | None = None,
    default_tensor_parallel: int | None = None,
) -> Calibration:
    """Read one log and hold it against the plan for the setup it states; ``--model``,
    ``--dtype`` and ``--tensor-parallel`` override what it states, the count of ``--gpu N*ID``
    (``default_tensor_parallel``) only fills in what it does not."""
    log = read_engine_log(text)
    _one_engine(text, source)
    if not log.allocation.lines:
        raise GpufitError(
            f"{source}: no vLLM, SGLang or llama.cpp allocation lines recognised (looked for "
            "'Model loading took', 'GPU KV cache size', 'Load weight end', 'KV Cache is "
            "allocated', 'model buffer size', 'KV buffer size'); is this a server's start-up log?"
        )
    engine = log.setup.engine or DEFAULT_ENGINE
    spec, notes = resolve_log_model(log.setup.model, model, base)
    named = log.setup.model or ""
    hinted = precision_from(None, log.setup.quantization, named)
    if precision is None and hinted is None and spec.quantization is not None:
        # A quantized checkpoint: the log's dtype is the activations', the weights stay as stored.
        hinted = "stored"
    chosen = precision or hinted or precision_from(log.setup.dtype, None, "")
    if chosen is None:
        chosen = "stored"
        notes.append("the log states no dtype: the checkpoint's own (stored) precision assumed")
    chosen = check_precision(chosen)
    stated = log.setup.tensor_parallel
    seen = log.setup.ranks_seen if (log.setup.ranks_seen or 0) > 1 else None
    tp = tensor_parallel or stated or default_tensor_parallel or seen or 1
    if tp == seen and not (tensor_parallel or stated or default_tensor_parallel):
        notes.append(f"tensor parallel {seen}: the ranks that logged (the log states no size)")
    if tensor_parallel and stated and tensor_parallel != stated:
        notes.append(f"the log says tensor parallel {stated}; --tensor-parallel {tp} used")
    knobs = knobs_from(log, engine)
    card_known = gpu is not None
    card_note = None
    if gpu is not None and (mismatch := _other_card(log.setup.gpu_memory_gib, gpu)):
        notes.append(mismatch)
        card_known, card_note = False, "the log's card is not --gpu's"
    if gpu is None:
        # Weights and KV bytes per token do not depend on the card; the plan needs one, so the
        # catalog's largest stands in and the card-dependent figures are not compared.
        gpu = catalog_gpu("b200")
    the_plan = plan(spec, chosen, gpu, tp, knobs)
    figures, skipped = compare(log, the_plan, card_known, card_note)
    if card_known and not the_plan.starts:
        notes.append(f"the plan says it does not start: {the_plan.reason}")
    if not figures and not skipped:
        raise GpufitError(f"{source}: the log's lines carry no figure the plan predicts")
    knob_view = {k: v for k, v in _knob_dict(knobs).items() if v not in (None, False)}
    return Calibration(
        source=source,
        engine=engine + (f" {log.setup.version}" if log.setup.version else ""),
        model=spec.name,
        precision=chosen,
        tensor_parallel=tp,
        gpu=(gpu.catalog_id or gpu.name) if card_known or card_note else None,
        knobs=knob_view,
        figures=tuple(figures),
        notes=tuple(notes),
        not_compared=tuple(skipped),
        plan=the_plan.to_dict() if card_known else None,
    )


# How far the memory a log states for its card may be from --gpu's total: CUDA's total is a
# little under NVML's (an H100 80GB: 79.15-79.22 GiB logged, 79.65 GiB in NVML).
_CARD_TOLERANCE = 0.05


def _other_card(logged_gib: float | None, gpu: Gpu) -> str | None:
    """Why the log's card (its stated total memory) is not ``gpu``; None when it may be."""
    if not logged_gib or not gpu.memory_total_bytes:
        return None
    total = gpu.memory_total_bytes / GIB
    if abs(logged_gib / total - 1) <= _CARD_TOLERANCE:
        return None
    return (
        f"the log's card has {logged_gib:.2f} GiB in all (total_gpu_memory), --gpu "
        f"{gpu.catalog_id or gpu.name} has {total:.2f} GiB: another card, so the figures that "
        "depend on the card are not compared"
    )


def _one_engine(text: str, source: str) -> None:
    """Refuse a log whose allocation lines are two engines' (starts of different servers pasted
    into one file): only one of them would be read, as if it were the whole log."""
    lines = text.splitlines()
    found = {e.name: e.read_allocation(lines).lines for e in all_engines()}
    found = {name: hits for name, hits in found.items() if hits}
    if len(found) > 1:
        shown = "; ".join(f"{name}: {hits[0][:60]!r}" for name, hits in found.items())
        raise GpufitError(
            f"{source}: allocation lines of {len(found)} engines ({shown}); give one server's "
            "start-up log per file"
        )


def _knob_dict(knobs: EngineKnobs) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(knobs).items() if k != "engine"}


def read_log_file(path: str) -> str:
    """A log's text, read up to ``MAX_LOG_BYTES`` (a pipe or /dev/zero must not fill memory); a
    missing, unreadable or oversized file is one message."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_LOG_BYTES + 1)
    except FileNotFoundError:
        raise GpufitError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GpufitError(f"{path}: a folder; give the server's log file") from None
    except OSError as error:
        raise GpufitError(f"{path}: unreadable: {error.strerror or error}") from None
    if len(data) > MAX_LOG_BYTES:
        raise GpufitError(
            f"{path}: more than {MAX_LOG_BYTES // 2**20} MiB; a start-up log is far smaller "
            "(cut the start of the server's log into a file)"
        )
    return data.decode("utf-8", "replace")


def _value(x: float, unit: str) -> str:
    if unit == "tokens":
        return f"{x:,.0f} tokens"
    if unit == "x":
        return f"{x:.2f}x"
    if unit == "B":
        return f"{x:,.0f} B"
    return f"{x:.2f} {unit}"


def render(results: Sequence[Calibration], fmt: str = "text") -> str:
    """Text (a table per log) or JSON (a list of objects)."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2)
    out: list[str] = []
    for r in results:
        knobs = ", ".join(f"{k}={v}" for k, v in r.knobs.items()) or "defaults"
        card = (
            f" on {r.tensor_parallel}*{r.gpu}"
            if r.gpu and r.tensor_parallel > 1
            else (f" on {r.gpu}" if r.gpu else "")
        )
        out.append(
            f"{r.source}: {r.engine}, {r.model} {r.precision}, TP {r.tensor_parallel}"
            f"{card} ({knobs})"
        )
        out += [f"  note: {n}" for n in r.notes]
        rows = [("figure", "log", "predicted", "error")] + [
            (
                f.name,
                _value(f.logged, f.unit),
                _value(f.predicted, f.unit),
                "n/a" if f.error is None else f"{f.error:+.1%}",
            )
            for f in r.figures
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        out += [
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        out += [f"  not compared: {s}" for s in r.not_compared]
    return "\n".join(out)
