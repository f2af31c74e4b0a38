"""``gpufit upgrade A B`` (alias ``compare-setups``): what setup B adds over setup A.

Per model and precision: whether it fits (raw bytes) and starts (the engine's plan) on each,
the context and KV cache gained, the copies gained, and the decode ceiling of one copy with
the interconnect counted. Tensor-parallel decode ends two row-parallel projections per layer
(attention output, MLP down) in an all-reduce of ``hidden x bytes`` per token; a ring
all-reduce over N cards moves ``2 (N-1)/N`` of that over the link, each way at once. The
ceiling adds that transfer time to the weight-read time and counts no latency, so it is an
upper bound: at batch 1 over PCIe the all-reduce latency (microseconds each, two per layer)
is the larger real cost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pytest_gpufit.engines.knobs import parse_knobs
from pytest_gpufit.engines.planning import plan
from pytest_gpufit.engines.registry import DEFAULT as DEFAULT_ENGINE
from pytest_gpufit.engines.registry import engine as registered
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.context import RopeScaling, check_context, with_rope_scaling
from pytest_gpufit.fit.estimate import GpuFit, MemoryEstimate, estimate, fit_on
from pytest_gpufit.fit.spec import ModelSpec, load_spec
from pytest_gpufit.hardware.catalog import card_link
from pytest_gpufit.numbers import short_tokens
from pytest_gpufit.units import format_gb

if TYPE_CHECKING:
    from pytest_gpufit.fit.table import Setup

ALL_REDUCES_PER_LAYER = 2  # attention o_proj and MLP down_proj (Megatron-style TP)


@dataclass(frozen=True)
class SetupView:
    """One model x precision on one setup."""

    setup: str
    fits: bool
    starts: bool | None  # None: the engine cannot run this split (reason says why)
    reason: str | None
    per_card_bytes: int
    card_bytes: int
    max_context: int
    kv_cache_tokens: int
    copies: int
    decode_tok_s_ceiling: float | None
    link: str | None
    link_share: float  # the fraction of one token's decode time spent on the link
    max_concurrency: float = 0.0  # requests of the table's context the KV cache holds (plan)
    context: int = 0  # the context the plan ran at (the table's)


@dataclass(frozen=True)
class Upgrade:
    """What B adds over A for one model at one precision."""

    model: str
    dtype: str
    a: SetupView
    b: SetupView
    gains: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dtype": self.dtype,
            "a": asdict(self.a),
            "b": asdict(self.b),
            "gains": list(self.gains),
        }


def allreduce_bytes_per_token(spec: ModelSpec, cards: int, act_bytes: int) -> float:
    """Bytes each card sends per decoded token over the link: ring all-reduce of the hidden
    state, ``ALL_REDUCES_PER_LAYER`` per layer.

    >>> allreduce_bytes_per_token(load_spec("llama-3.1-70b"), 2, 2)
    2621440.0
    >>> allreduce_bytes_per_token(load_spec("llama-3.1-70b"), 1, 2)
    0.0
    """
    if cards <= 1:
        return 0.0
    ring = 2 * (cards - 1) / cards
    return spec.num_layers * ALL_REDUCES_PER_LAYER * ring * spec.hidden_size * act_bytes


def decode_ceiling(
    spec: ModelSpec, est: MemoryEstimate, setup: Setup
) -> tuple[float | None, float, str | None]:
    """(tokens/s for one copy at batch 1, the link's share of a token's time, the link kind).

    Weights and KV are read in parallel by the cards (bandwidth x cards); the all-reduces go
    over the catalog's link between two cards of the kind. A local or unknown card has no
    link fact: then N > 1 gives no ceiling rather than a made-up one.
    """
    bandwidth = setup.gpu.memory_bandwidth_bytes_s
    if not bandwidth:
        return None, 0.0, None
    read_s = est.decode_bytes_per_token / (bandwidth * setup.count)
    if setup.count == 1:
        return round(1 / read_s, 1), 0.0, None
    link = card_link(setup.gpu.catalog_id) if setup.gpu.catalog_id else None
    if link is None:
        return None, 0.0, None
    act_bytes = 4 if est.dtype == "fp32" else 2
    link_s = allreduce_bytes_per_token(spec, setup.count, act_bytes) / link.bytes_s
    return round(1 / (read_s + link_s), 1), link_s / (read_s + link_s), link.kind


def _view(
    spec: ModelSpec, est: MemoryEstimate, setup: Setup, engine: str, fit: GpuFit
) -> SetupView:
    starts: bool | None
    reason: str | None
    concurrency = 0.0
    try:
        knobs = parse_knobs(engine, **registered(engine).knobs_for(est.context, 1, None))
        the_plan = plan(spec, est.dtype, setup.gpu, setup.count, knobs)
        starts, reason, tokens = the_plan.starts, the_plan.reason, the_plan.kv_cache_tokens
        concurrency = the_plan.max_concurrency
    except GpufitError as error:  # e.g. TP that does not divide the heads
        starts, reason, tokens = None, str(error), 0
    ceiling, share, link = decode_ceiling(spec, est, setup)
    return SetupView(
        setup=setup.id,
        fits=fit.fits,
        starts=starts,
        reason=reason,
        per_card_bytes=fit.per_card_bytes,
        card_bytes=fit.usable_bytes,
        max_context=fit.max_context,
        kv_cache_tokens=tokens if starts else 0,
        copies=fit.instances,
        decode_tok_s_ceiling=ceiling,
        link=link,
        link_share=round(share, 4),
        max_concurrency=concurrency if starts else 0.0,
        context=est.context,
    )


def _gains(a: SetupView, b: SetupView, a_setup: Setup, b_setup: Setup) -> tuple[str, ...]:
    gains: list[str] = []
    if b.fits and not a.fits:
        gains.append("newly fits")
    if b.starts and not a.starts:
        gains.append("newly starts")
    if b.fits and a.fits and b.max_context > a.max_context:
        gains.append(f"+{short_tokens(b.max_context - a.max_context)} ctx")
    if b.starts and a.starts and b.kv_cache_tokens > a.kv_cache_tokens:
        # Counted as vLLM's log counts them ("GPU KV cache size: 278,784 tokens").
        gains.append(f"KV cache {a.kv_cache_tokens:,} -> {b.kv_cache_tokens:,} tokens")
    if b.starts and b.max_concurrency > (a.max_concurrency if a.starts else 0):
        before = f"{a.max_concurrency:.2f}x" if a.starts else "none"
        gains.append(f"concurrency {before} -> {b.max_concurrency:.2f}x at {b.context:,} tokens")
    # B's cards can also hold independent copies of A's setup (data parallel).
    replicas = (
        (b_setup.count // a_setup.count) * a.copies
        if b_setup.gpu.name == a_setup.gpu.name and a_setup.count <= b_setup.count
        else 0
    )
    copies = max(b.copies, replicas)
    if copies > a.copies and a.copies:
        how = " (one per card)" if replicas > b.copies else ""
        gains.append(f"copies {a.copies} -> {copies}{how}")
    if a.decode_tok_s_ceiling and b.decode_tok_s_ceiling and a.fits and b.fits:
        change = b.decode_tok_s_ceiling / a.decode_tok_s_ceiling - 1
        gains.append(f"decode ceiling {change:+.0%} per copy")
    return tuple(gains)


def compare(
    models: Sequence[str],
    a: Setup,
    b: Setup,
    dtypes: Sequence[str],
    context: int | None = None,
    engine: str = DEFAULT_ENGINE,
    rope: RopeScaling | None = None,
) -> list[Upgrade]:
    rows = []
    for model in models:
        spec = with_rope_scaling(load_spec(model), rope)
        check_context(spec, context)
        for dtype in dtypes:
            est = estimate(spec, dtype, context)
            view_a = _view(spec, est, a, engine, fit_on(spec, est, a.gpu, a.count, a.id))
            view_b = _view(spec, est, b, engine, fit_on(spec, est, b.gpu, b.count, b.id))
            rows.append(Upgrade(spec.name, est.dtype, view_a, view_b, _gains(view_a, view_b, a, b)))
    return rows


def _cell(v: SetupView) -> str:
    if not v.fits and v.starts is None and v.reason:  # the cards cannot split the heads
        return f"no: {v.reason}"
    if not v.fits:
        return (
            f"no: needs {format_gb(v.per_card_bytes)}/card, "
            f"card has {format_gb(v.card_bytes)} usable"
        )
    if v.starts is None:
        return f"fits; engine: {v.reason}"
    # The plan's reason up to its advice ("weights need 87.00 GiB per GPU, more than the ...").
    why = f" ({v.reason.split(':')[0]})" if v.reason else ""
    started = (
        f"starts, {v.kv_cache_tokens:,} KV, {v.max_concurrency:.2f}x"
        if v.starts
        else f"does not start{why}"
    )
    ceiling = f", <= {v.decode_tok_s_ceiling:.0f} tok/s" if v.decode_tok_s_ceiling else ""
    link = f" (link {v.link}: {v.link_share:.1%} of it)" if v.link else ""
    return f"x{v.copies}, {short_tokens(v.max_context)} ctx, {started}{ceiling}{link}"


LEGEND = (
    "xN: copies that fit side by side; C ctx: the largest context of one copy (raw bytes)",
    "starts / does not start, N KV: the engine's plan (--engine, default vllm) with "
    "--max-model-len at the table's context (--context: 8192, or the model's maximum if "
    "smaller), other knobs at its defaults; N KV: its KV cache in tokens (vLLM's 'GPU KV cache "
    "size'); C x: requests of that context it holds at once (vLLM's 'Maximum concurrency')",
    "<= T tok/s: decode ceiling of one copy at batch 1: weight and KV reads over the cards' "
    "bandwidth plus the tensor-parallel all-reduces over the link (share of the time in "
    "brackets); all-reduce latency is not counted, so it is a bound, not a measurement",
    "copies A -> B (one per card): B also runs independent copies of A's setup on its cards",
)


def render(rows: Sequence[Upgrade], a: Setup, b: Setup, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps([r.to_dict() for r in rows], indent=2)
    header = ["model", "dtype", a.id, b.id, f"{b.id} adds"]
    body = [[r.model, r.dtype, _cell(r.a), _cell(r.b), "; ".join(r.gains) or "-"] for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join([*lines, "", *(f"- {item}" for item in LEGEND)])
    if fmt != "text":
        raise GpufitError(f"--format: expected text, markdown or json, got {fmt!r}")
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    return "\n".join([*table, "", *(f"  {item}" for item in LEGEND)])
