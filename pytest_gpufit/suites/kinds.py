"""The check kinds of a suite: one entry per kind, the one home of everything about it.

An entry holds the kind's YAML fields (each a value kind of ``fields.py``, which also gives the
JSON Schema) and their defaults, the backend capabilities it needs (for the whole check or for
one field), whether it runs under simulation, the baseline metrics it yields, and its ``run``.
The suite validator, the JSON Schema generator, the collected items and the collection-time
capability errors all read this table. Adding a check kind is one entry here (and its ``run``,
written once over ``pytest_gpufit.backends.capabilities``) plus its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_gpufit import allreduce
from pytest_gpufit.backends import CAPABILITIES, CAPABILITY_TEXT
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.requirements import Requirement
from pytest_gpufit.suites import fields as f
from pytest_gpufit.suites.context import Context
from pytest_gpufit.suites.link_checks import run_allreduce
from pytest_gpufit.suites.model_checks import (
    run_fits,
    run_generates,
    run_loads,
    run_precision,
    run_throughput,
)
from pytest_gpufit.suites.serving_checks import run_load, run_serves_check

Params = dict[str, Any]
Run = Callable[[Context, Params], None]


@dataclass(frozen=True)
class Need:
    """A backend capability (a name of ``pytest_gpufit.backends.CAPABILITIES``) that a check
    needs: for the whole check when ``field`` is None, else when that field is given; ``when``
    decides instead where a value, not the field's presence, brings the need."""

    capability: str
    field: str | None = None  # the field a collection error names
    when: Callable[[Mapping[str, Any]], bool] | None = None

    def applies(self, params: Mapping[str, Any]) -> bool:
        if self.when is not None:
            return self.when(params)
        return self.field is None or self.field in params


@dataclass(frozen=True)
class CheckKind:
    """One check kind: what its YAML says, what it needs and yields, and how it runs."""

    name: str
    run: Run  # records figures in ctx.metrics, unmet expectations in ctx.failures
    fields: Mapping[str, f.Kind] = field(default_factory=dict)  # in schema order
    defaults: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[Need, ...] = ()
    # False: gpufit computes it itself (fits), never asking the target's backend. A kind that
    # asks no backend and reads no model (allreduce: devices only) needs no model: at all.
    uses_backend: bool = True
    reads_model: str | None = None  # what reads the model's config itself: model: is required
    simulation: bool = False  # runs under --gpufit-simulate: an estimate, no device work
    metrics: tuple[str, ...] = ()  # the baseline metrics it yields (names of the Metric table)
    # Cross-field rules and derived defaults on the parsed fields; a GpufitError names the check.
    refine: Callable[[Params], Params] | None = None
    # Parameters that only judge the figures (thresholds, expected text) or only repeat the
    # measurement: a baseline stays comparable when one changes. Every other parameter is part
    # of what was measured (a missed entry costs a re-save, never a false green).
    judging_only: frozenset[str] = frozenset()
    # The words naming what in this check only an accepted baseline judges (None: nothing).
    baseline_judges: Callable[[Mapping[str, Any]], str | None] | None = None
    # What its devices must meet on a GPU target, beside the suite's and the target's
    # requirements (allreduce: 2 GPUs); judged by the one evaluate, its devices in ctx.devices.
    requires: Requirement | None = None


def _generates_prompt(params: Params) -> Params:
    if "prompt" in params and "prompt_tokens" in params:
        raise GpufitError("give prompt or prompt_tokens, not both")
    if "prompt" not in params and "prompt_tokens" not in params:
        params["prompt_tokens"] = 16
    return params


# An all-reduce buffer: a size with its unit, 1 B to 16 GiB (a bare number would be GB). The
# JSON Schema takes any size with a unit; the range is the validator's.
_UNIT_SIZE = r"^ *([0-9]+(\.[0-9]*)?|\.[0-9]+) *([Bb]|[KkMmGgTt][Ii]?[Bb]) *$"


@f.kind(
    {
        "type": "string",
        "pattern": _UNIT_SIZE,
        "description": "a size with its unit, 1 B to 16 GiB: '8B', '4KiB', '64MiB'",
    }
)
def _buffer_size(value: Any) -> int:
    return allreduce.buffer_size(value, "size")


def _sweep(params: Params) -> Params:
    allreduce.check_sweep(allreduce.AllReduceParams(**params))
    return params


_ALLREDUCE_DEFAULTS = allreduce.AllReduceParams()


def _golden(params: Mapping[str, Any]) -> bool:
    return params.get("reference") == "golden"  # the baseline's stored tokens


KINDS: dict[str, CheckKind] = {
    kind.name: kind
    for kind in (
        CheckKind(
            "fits",
            run_fits,
            uses_backend=False,
            reads_model="the fit estimate",
            simulation=True,
        ),
        CheckKind("serves", run_serves_check, needs=(Need("serve"),)),
        CheckKind(
            "loads",
            run_loads,
            fields={
                "max_seconds": f.seconds,
                "max_peak_memory": f.size,
                "within_estimate": f.percent,
            },
            needs=(
                Need("load"),
                Need("peak_memory", "max_peak_memory"),
                Need("peak_memory", "within_estimate"),
            ),
            metrics=("load_seconds", "peak_memory"),
            judging_only=frozenset({"max_seconds", "max_peak_memory", "within_estimate"}),
        ),
        CheckKind(
            "generates",
            run_generates,
            fields={
                "prompt": f.text,
                "prompt_tokens": f.positive_int,
                "max_new_tokens": f.positive_int,
                "expect_contains": f.text,
                "expect_tokens": f.token_list,
            },
            defaults={"max_new_tokens": 16},
            needs=(Need("generate"), Need("token_ids", "expect_tokens")),
            refine=_generates_prompt,
            judging_only=frozenset({"expect_contains", "expect_tokens"}),
        ),
        CheckKind(
            "throughput",
            run_throughput,
            fields={
                "prompt_tokens": f.positive_int,
                "new_tokens": f.positive_int,
                "batch": f.batch,
                "warmup": f.warmup,
                "repeats": f.repeats,
                "prompts": f.prompts,
                "min_decode_tok_s": f.positive_number,
                "min_prefill_tok_s": f.positive_number,
                "max_ttft_ms": f.positive_number,
            },
            defaults={
                "prompt_tokens": 128,
                "new_tokens": 64,
                "batch": 1,
                "warmup": 1,
                "repeats": 5,
                "prompts": "unique",
            },
            needs=(
                Need("throughput"),
                Need("batch", "batch", when=lambda params: params.get("batch", 1) != 1),
            ),
            metrics=("decode_tok_s", "prefill_tok_s", "ttft_ms"),
            judging_only=frozenset(
                {"min_decode_tok_s", "min_prefill_tok_s", "max_ttft_ms", "repeats"}
            ),
        ),
        CheckKind(
            "load",
            run_load,
            fields={
                "concurrency": f.levels,
                "rate": f.rates,
                "requests": f.positive_int,
                "prompt_tokens": f.positive_int,
                "new_tokens": f.positive_int,
                "prompts": f.prompts,
                "max_seconds": f.seconds,
                "timeout_s": f.seconds,
                "slo": f.slo,
                "min_goodput": f.percent,
                "max_error_rate": f.percent,
            },
            defaults={
                "requests": 16,
                "prompt_tokens": 128,
                "new_tokens": 64,
                "prompts": "unique",
                "max_seconds": 300.0,
                "timeout_s": 120.0,
            },
            needs=(Need("load_levels"),),
            # per level, stored as c8_ttft_ms_p99 (concurrency 8) or r2_goodput (2 req/s)
            metrics=("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p99", "goodput", "output_tok_s"),
            judging_only=frozenset({"min_goodput", "max_error_rate"}),
        ),
        CheckKind(
            "precision",
            run_precision,
            fields={
                "reference": f.choice(("fp32", "golden")),
                "prompt_tokens": f.positive_int,
                "max_kl": f.positive_number,
                "min_top1_agreement": f.fraction,
                "new_tokens": f.positive_int,
                "top_k": f.positive_int,
                "max_logprob_diff": f.positive_number,
            },
            defaults={
                "reference": "fp32",
                "prompt_tokens": 64,
                "new_tokens": 16,
                "top_k": 5,
                "max_logprob_diff": 0.1,
            },
            needs=(
                Need("golden", when=_golden),
                Need("fp32_logits", "reference", when=lambda params: not _golden(params)),
            ),
            metrics=("kl", "top1_agreement"),
            judging_only=frozenset({"max_kl", "min_top1_agreement", "max_logprob_diff"}),
            baseline_judges=lambda params: "reference: golden" if _golden(params) else None,
        ),
        CheckKind(
            "allreduce",
            run_allreduce,
            fields={
                "min_size": _buffer_size,
                "max_size": _buffer_size,
                "factor": f.int_kind(2, 1024),
                "dtype": f.choice(tuple(allreduce.ELEMENT_BYTES)),
                "warmup": f.warmup,
                "iters": f.int_kind(1, 10_000, " all-reduces"),
                "repeats": f.repeats,
                "processes": f.int_kind(2, allreduce.MAX_RANKS, " ranks"),
                "backend": f.choice(("nccl", "gloo")),
                "min_busbw_gb_s": f.positive_number,
                "max_latency_us": f.positive_number,
                "timeout_s": f.seconds,
            },
            # The sizes' defaults are AllReduceParams' (8 B to 64 MiB): a size field takes text.
            defaults={
                key: getattr(_ALLREDUCE_DEFAULTS, key)
                for key in ("factor", "dtype", "warmup", "iters", "repeats", "timeout_s")
            },
            uses_backend=False,  # devices only: no model, no backend
            metrics=allreduce.BASELINE_METRICS,
            judging_only=frozenset({"min_busbw_gb_s", "max_latency_us", "repeats", "timeout_s"}),
            refine=_sweep,
            requires=Requirement(count=2),
        ),
    )
}


def needs(kind: str, params: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """(field or None for the whole check, capability) pairs a check needs from its backend.

    >>> needs("precision", {"reference": "fp32", "max_kl": 0.1})
    [('reference', 'fp32_logits')]
    >>> needs("loads", {"max_peak_memory": 10})
    [(None, 'load'), ('max_peak_memory', 'peak_memory')]
    """
    return [(n.field, n.capability) for n in KINDS[kind].needs if n.applies(params)]


def unsupported(
    backend: str, kind: str, params: Mapping[str, Any]
) -> tuple[str | None, str] | None:
    """The first (field, message) a ``backend`` cannot measure for this check, or None.

    >>> unsupported("openai", "throughput", {"batch": 4})[0]
    'batch'
    >>> unsupported("transformers", "throughput", {"batch": 4}) is None
    True
    """
    have = CAPABILITIES.get(backend, frozenset())
    for key, capability in needs(kind, params):
        if capability not in have:
            return key, (
                f"the {backend} backend cannot measure this: it needs {CAPABILITY_TEXT[capability]}"
            )
    return None


def model_free(kinds: Iterable[str]) -> bool:
    """Whether checks of these kinds need no model at all (none asks a backend or reads a
    config); a target of only such checks may omit ``model:``.

    >>> model_free(["fits"]), model_free(["loads", "generates"]), model_free([])
    (False, False, False)
    """
    named = list(kinds)
    return bool(named) and all(
        name in KINDS and not KINDS[name].uses_backend and KINDS[name].reads_model is None
        for name in named
    )
