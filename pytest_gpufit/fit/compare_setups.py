"""``gpufit upgrade A B`` (alias ``compare-setups``): what setup B adds over setup A.

Per model and precision, one table: setup A as it runs, then every way to run the model on B's
cards (``engines.parallel``: tensor parallel, pipeline parallel, replicas behind a router,
expert parallel for an MoE model, as the engine offers them), each with its memory per card,
its KV cache counted as the engine's log counts it, the requests of the user's context it holds
at once, and its decode (``fit.decode_time``: batch 1 and the aggregate at the user's
concurrency, a model, with the bandwidth bound beside it), the link between the cards timed by
the PCIe topology and P2P (``fit.link_time``). What B adds over A (fits, starts, context, KV
cache, copies, decode) closes each row.

``decode_ceiling`` is the older bound, kept in the JSON (``a``, ``b``): weight and KV reads over
the cards' bandwidth plus the all-reduce bytes over the link, no latency.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pytest_gpufit.engines.knobs import parse_knobs
from pytest_gpufit.engines.parallel import StrategyPlan, offered, plan_strategy, strategy_label
from pytest_gpufit.engines.planning import interconnect, plan
from pytest_gpufit.engines.protocol import EngineKnobs
from pytest_gpufit.engines.registry import DEFAULT as DEFAULT_ENGINE
from pytest_gpufit.engines.registry import engine as registered
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.context import RopeScaling, check_context, with_rope_scaling
from pytest_gpufit.fit.decode_time import DecodeEstimate, decode_estimate, model_reads
from pytest_gpufit.fit.estimate import KV_DTYPES, GpuFit, MemoryEstimate, estimate, fit_on
from pytest_gpufit.fit.link_time import DEFAULT_TOPOLOGY, LinkPath
from pytest_gpufit.fit.spec import ModelSpec, load_spec
from pytest_gpufit.hardware.catalog import card_link
from pytest_gpufit.numbers import short_tokens
from pytest_gpufit.units import GIB

if TYPE_CHECKING:
    from pytest_gpufit.fit.table import Setup

ALL_REDUCES_PER_LAYER = 2  # attention o_proj and MLP down_proj (Megatron-style TP)
DEFAULT_CONCURRENCY = 16  # requests in flight for the aggregate, unless --concurrency says


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
class WayView:
    """One way to run a model on a setup's cards: its memory plan and its decode."""

    setup: str
    label: str  # 1 card, TP 2, PP 2, 2 replicas, TP 2 + EP
    strategy: str
    cards: int
    launch: str  # the engine's flags for it
    starts: bool | None  # None: the engine cannot make this split (reason says why)
    reason: str | None
    weights_bytes_per_card: int  # the busiest card's (the stage or rank with least KV left)
    kv_cache_bytes_per_card: int
    kv_cache_tokens: int  # per copy, as the engine's log counts them
    replicas: int
    max_concurrency: float  # requests of the context the whole setup holds at once
    context: int
    link: str  # the link between the cards as modelled ("" for one card or replicas)
    decode: DecodeEstimate | None  # None: the card's bandwidth is unknown
    gains: tuple[str, ...] = ()  # what it adds over setup A

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gains"] = list(self.gains)
        return data


@dataclass(frozen=True)
class Upgrade:
    """What B adds over A for one model at one precision."""

    model: str
    dtype: str
    a: SetupView
    b: SetupView
    gains: tuple[str, ...]
    ways: tuple[WayView, ...] = ()  # A as it runs, then every way to run it on B's cards
    concurrency: int = DEFAULT_CONCURRENCY  # the user's, for the aggregate decode
    notes: tuple[str, ...] = ()  # the estimate's warnings: a model card's note on rope scaling

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dtype": self.dtype,
            "a": asdict(self.a),
            "b": asdict(self.b),
            "gains": list(self.gains),
            "ways": [w.to_dict() for w in self.ways],
            "concurrency": self.concurrency,
            "notes": list(self.notes),
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


def _knobs(engine: str, context: int) -> EngineKnobs:
    return parse_knobs(engine, **registered(engine).knobs_for(context, 1, None))


def _view(
    spec: ModelSpec, est: MemoryEstimate, setup: Setup, engine: str, fit: GpuFit
) -> SetupView:
    starts: bool | None
    reason: str | None
    concurrency = 0.0
    try:
        the_plan = plan(spec, est.dtype, setup.gpu, setup.count, _knobs(engine, est.context))
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


@dataclass(frozen=True)
class LinkChoice:
    """What the user says of the link between the cards (``--topology``, ``--p2p``): the
    topology class, and P2P on/off (None: the catalog's answer for the card)."""

    topology: str = DEFAULT_TOPOLOGY
    p2p: bool | None = None


def link_path(setup: Setup, choice: LinkChoice) -> LinkPath:
    """The path between ``setup``'s cards: NVLink where the catalog says so, else the user's
    topology, with P2P as the user says or else as the catalog says (on where it does not say).

    >>> from pytest_gpufit.fit.table import parse_setups
    >>> link_path(parse_setups("2*rtx-4090")[0], LinkChoice()).text
    'host-bridge, P2P off'
    >>> link_path(parse_setups("2*h100")[0], LinkChoice("sockets", False)).text
    'nvlink'
    """
    link = interconnect(setup.gpu)
    if link.kind == "nvlink":
        return LinkPath("nvlink", True)
    p2p = choice.p2p if choice.p2p is not None else link.p2p is not False
    return LinkPath(choice.topology, p2p)


def _kv_key(name: str) -> str | None:
    """The KV dtype of a plan as ``fit.estimate.KV_DTYPES`` names it (None: the default)."""
    return name if name in KV_DTYPES else None


def _way(
    spec: ModelSpec,
    est: MemoryEstimate,
    setup: Setup,
    strategy: str,
    engine: str,
    concurrency: int,
    choice: LinkChoice,
) -> WayView:
    cards = setup.count
    label = strategy_label(strategy, cards)
    knobs = _knobs(engine, est.context)
    try:
        planned: StrategyPlan | None = plan_strategy(
            strategy, spec, est.dtype, setup.gpu, cards, knobs
        )
    except GpufitError as error:  # a split the engine cannot make: TP 3 over 32 heads
        planned, reason = None, str(error)
    if planned is None:
        return WayView(
            setup=setup.id,
            label=label,
            strategy=strategy,
            cards=cards,
            launch="",
            starts=None,
            reason=reason,
            weights_bytes_per_card=0,
            kv_cache_bytes_per_card=0,
            kv_cache_tokens=0,
            replicas=1,
            max_concurrency=0.0,
            context=est.context,
            link="",
            decode=None,
        )
    busiest = planned.busiest
    path = link_path(setup, choice)
    kind = registered(engine).allreduce_kind(cards, path.topology == "nvlink", path.p2p)
    decode = None
    bandwidth = setup.gpu.memory_bandwidth_bytes_s
    if bandwidth and planned.starts:
        reads = model_reads(spec, est.dtype, est.context, _kv_key(busiest.kv_cache_dtype))
        held = max(1, min(concurrency, int(planned.max_concurrency)))
        decode = decode_estimate(strategy, reads, cards, bandwidth, path, kind, held)
    link = ""
    if cards > 1 and strategy != "dp":
        known = card_link(setup.gpu.catalog_id) if setup.gpu.catalog_id else None
        where = "" if path.topology == "nvlink" else f", {path.text}"
        what = "sends" if strategy == "pp" else kind
        link = f"link {known.kind if known else 'unknown'}{where}, {what}"
    return WayView(
        setup=setup.id,
        label=label,
        strategy=strategy,
        cards=cards,
        launch=planned.launch,
        starts=planned.starts,
        reason=planned.reason,
        weights_bytes_per_card=busiest.weights_bytes_per_gpu,
        kv_cache_bytes_per_card=busiest.kv_cache_bytes_per_gpu,
        kv_cache_tokens=planned.kv_cache_tokens,
        replicas=planned.replicas,
        max_concurrency=planned.max_concurrency,
        context=est.context,
        link=link,
        decode=decode,
    )


def _way_gains(a: WayView, b: WayView) -> tuple[str, ...]:
    """What way ``b`` adds over ``a`` (the setup the user has): requests at once, decode."""
    if not b.starts:
        return ()
    if not a.starts:
        return ("newly starts",)
    gains = []
    if b.max_concurrency > a.max_concurrency:
        gains.append(f"concurrency {a.max_concurrency:.2f}x -> {b.max_concurrency:.2f}x")
    gains += _decode_gains(a, b)
    return tuple(gains)


def _decode_gains(a: WayView, b: WayView) -> list[str]:
    """The model's decode change from ``a`` to ``b``: one request, and the user's concurrency."""
    if not (a.decode and b.decode and a.starts and b.starts):
        return []
    one = round(b.decode.batch1_tok_s / a.decode.batch1_tok_s - 1, 2) + 0.0  # no "-0%"
    many = round(b.decode.aggregate_tok_s / a.decode.aggregate_tok_s - 1, 2) + 0.0
    held = f" (A: C={a.decode.concurrency})" if a.decode.concurrency != b.decode.concurrency else ""
    return [
        f"decode {one:+.0%} for 1 request, {many:+.0%} at C={b.decode.concurrency}{held} (model)"
    ]


def _gains(
    a: SetupView,
    b: SetupView,
    a_setup: Setup,
    b_setup: Setup,
    main: tuple[WayView, WayView] | None = None,
) -> tuple[str, ...]:
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
    if main is not None:
        gains += _decode_gains(*main)
    return tuple(gains)


def compare(
    models: Sequence[str],
    a: Setup,
    b: Setup,
    dtypes: Sequence[str],
    context: int | None = None,
    engine: str = DEFAULT_ENGINE,
    rope: RopeScaling | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    link: LinkChoice | None = None,
) -> list[Upgrade]:
    """Per model and precision: A and B side by side, and every way to use B's cards."""
    choice = link or LinkChoice()
    rows = []
    for model in models:
        spec = with_rope_scaling(load_spec(model), rope)
        check_context(spec, context)
        for dtype in dtypes:
            est = estimate(spec, dtype, context)
            view_a = _view(spec, est, a, engine, fit_on(spec, est, a.gpu, a.count, a.id))
            view_b = _view(spec, est, b, engine, fit_on(spec, est, b.gpu, b.count, b.id))
            split = registered(engine).split_strategy
            first = _way(spec, est, a, split, engine, concurrency, choice)
            ways = [
                _way(spec, est, b, strategy, engine, concurrency, choice)
                for strategy in offered(engine, spec, b.count)
            ]
            main = next((w for w in ways if w.strategy == split), None)
            gains = _gains(view_a, view_b, a, b, (first, main) if main else None)
            # The engine's own split carries what B adds as a whole; the others their own.
            ways = [
                dataclasses.replace(w, gains=gains if w is main else _way_gains(first, w))
                for w in ways
            ]
            ways_all = (first, *ways)
            rows.append(
                Upgrade(
                    spec.name,
                    est.dtype,
                    view_a,
                    view_b,
                    gains,
                    ways_all,
                    concurrency,
                    est.warnings,
                )
            )
    return rows


# ---- the table ------------------------------------------------------------------------------


def _plan_cell(w: WayView) -> str:
    if w.starts is None:
        return f"no: {w.reason}"
    if not w.starts:
        # The plan's reason up to its advice ("weights need 87.00 GiB per GPU, more than ...").
        why = f" ({w.reason.split(':')[0]})" if w.reason else ""
        return f"does not start{why}"
    tokens = f"{w.replicas} x {w.kv_cache_tokens:,}" if w.replicas > 1 else f"{w.kv_cache_tokens:,}"
    return f"starts, {tokens} KV, {w.max_concurrency:.2f}x"


def _memory_cell(w: WayView) -> str:
    if not w.starts:
        return "-"
    return f"{w.weights_bytes_per_card / GIB:.1f} + {w.kv_cache_bytes_per_card / GIB:.1f} GiB"


def _decode_cells(w: WayView, asked: int) -> tuple[str, str]:
    d = w.decode
    if d is None:
        return "-", "-"
    one = f"{d.batch1_tok_s:.0f} (<= {d.bound_tok_s:.0f})"
    many = f"{d.aggregate_tok_s:.0f} ({d.per_request_tok_s:.0f} each)"
    if d.concurrency < asked:
        many += f" at C={d.concurrency}, all the cache holds"
    return one, many


def _link_cell(w: WayView) -> str:
    if not w.starts:
        return "-"
    if not w.link:
        return "no link" if w.cards > 1 and w.starts else "-"
    share = f" {w.decode.link_share:.0%}" if w.decode else ""
    return w.link + share


LEGEND = (
    "setup: A as it runs, then each way to run the model on B's cards as the engine offers "
    "them (--engine, default vllm): TP n tensor parallel, PP n pipeline parallel, n replicas "
    "(one copy per card behind a router), TP n + EP expert parallel (MoE models); the flags "
    "are in the JSON's ways[].launch",
    "plan: the engine's plan with --max-model-len at {context}, other knobs at its defaults; "
    "N KV: its KV cache in tokens per copy (vLLM's 'GPU KV cache size'; PP: the stage with the "
    "fewest; n x N: one cache per replica); C x: requests of that context it holds at once, all "
    "copies together (vLLM's 'Maximum concurrency')",
    "per card: weights + KV cache of the busiest card (GiB, as the engine's log words them)",
    "1 request tok/s: decode of one request, a model (fit/decode_time.py: bytes over bandwidth, "
    "a fixed time per layer, the link's all-reduces or sends; calibrated on published rows, "
    "docs/fit.md); it reads the KV cache at the card's full bandwidth, so at long contexts it "
    "is optimistic (gpt-oss-20b at 128K: 173 modelled, 105.5 measured); (<= T): the bandwidth "
    "bound, the busiest card's memory bandwidth over the bytes a token reads; all-reduce "
    "latency is not counted, so it is a bound, not a measurement",
    "C=N tok/s: output tokens/s of N requests of that context at once (--concurrency), the "
    "same model, and (n each) per request; 'at C=n, all the cache holds': the plan's KV cache "
    "holds only n such requests, so the figure is at n; it counts memory and latency, not "
    "arithmetic, so at large N it is optimistic",
    "link: the link kind, its PCIe topology (--topology) and P2P (--p2p), then what crosses "
    "it: the all-reduce the engine runs (one-shot: vLLM's custom kernel, 2 PCIe cards with "
    "P2P; nccl otherwise) or PP's sends of activations between stages, and its share of a "
    "1-request token; no link: replicas do not talk to each other",
    "B adds: over A; newly fits: by the raw estimate of `gpufit table`, newly starts: by the "
    "engine's plan; +N ctx: the largest context one copy holds (`gpufit table`); KV cache and "
    "concurrency: the plan's; copies A -> B: copies that fit side by side by `gpufit table`'s "
    "estimate (its fits xN), (one per card): B's cards each run a copy of A's setup; decode "
    "... (model): the change in the two decode columns, (A: C=n): A's aggregate is at the n "
    "requests its cache holds",
)


def _legend_context(rows: Sequence[Upgrade]) -> str:
    """The context the plans ran at, as the legend says it: the one figure when every row
    shares it (``16,384 tokens``), else where it comes from."""
    contexts = {w.context for r in rows for w in r.ways}
    if len(contexts) == 1:
        return f"the table's context, {contexts.pop():,} tokens (--context)"
    return "the table's context (--context; default 8,192, or the model's maximum if smaller)"


def _shown(row: Upgrade) -> tuple[WayView, ...]:
    """The rows of the table for one model: A, then B's ways; when none of them starts on B,
    only the engine's own split says why."""
    first, *ways = row.ways
    if ways and not any(w.starts for w in ways):  # A's row is the engine's own split
        ways = [next((w for w in ways if w.strategy == first.strategy), ways[0])]
    return (first, *ways)


def render(rows: Sequence[Upgrade], a: Setup, b: Setup, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps([r.to_dict() for r in rows], indent=2)
    asked = rows[0].concurrency if rows else DEFAULT_CONCURRENCY
    many = f"C={asked} tok/s"
    header = ["model", "dtype", "setup", "plan", "per card", "1 request tok/s", many, "link"]
    header.append(f"{b.id} adds")
    body = []
    for r in rows:
        for i, w in enumerate(_shown(r)):
            one, several = _decode_cells(w, r.concurrency)
            body.append(
                [
                    r.model if i == 0 else "",
                    r.dtype if i == 0 else "",
                    w.setup if w.cards == 1 else f"{w.setup} {w.label}",
                    _plan_cell(w),
                    _memory_cell(w),
                    one,
                    several,
                    _link_cell(w),
                    "; ".join(w.gains) or "-",
                ]
            )
    # What the estimate notes (a model card's caution on rope scaling), once, above the table.
    notes = list(dict.fromkeys(f"note: {r.model}: {n}" for r in rows for n in r.notes))
    context = _legend_context(rows)
    legend = [item.replace("{context}", context) for item in LEGEND]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        above = [*(f"- {n}" for n in notes), ""] if notes else []  # a list, not one paragraph
        return "\n".join([*above, *lines, "", *(f"- {item}" for item in legend)])
    if fmt != "text":
        raise GpufitError(f"--format: expected text, markdown or json, got {fmt!r}")
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    return "\n".join([*notes, *table, "", *(f"  {item}" for item in legend)])
