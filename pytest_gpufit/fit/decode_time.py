"""Decode speed of each way to use N cards: a model, with its bound beside it.

A decode step on a card takes the bytes it reads over the card's memory bandwidth, plus a fixed
time per decoder layer (kernel launches and the small kernels a step runs whatever its size),
plus the collectives it waits for:

    step(b) = bytes(b) / bandwidth + layers x LAYER_LATENCY_US + collectives(b)

- ``bytes(b)`` at ``b`` requests in flight: every non-expert weight; of the routed experts, the
  expected number the ``b x top_k`` choices touch (``distinct_experts``); each request's KV
  cache at the context.
- **tensor parallel (TP n)**: each card reads 1/n of the weights and its KV heads; every layer
  ends its attention and its MLP in an all-reduce of ``b x hidden`` activations, plus the
  embedding's and the logits' (``2 x layers + 2``), each timed by ``fit.link_time`` for the
  engine's all-reduce (one-shot or NCCL) over the PCIe topology.
- **expert parallel (TP n + EP)**: as TP, but whole experts sit on one card each, so the card
  that drew the most of a step's experts sets the pace (``busiest_experts``).
- **pipeline parallel (PP n)**: no all-reduce; each card runs its 1/n of the layers and sends
  the activations on. At batch 1 only one stage works at a time (the bubble): a token takes the
  sum of the stages plus n - 1 sends. With ``c >= n`` requests, n micro-batches of ``c / n``
  keep every stage busy.
- **replicas (n copies behind a router)**: no link at all; each copy serves ``c / n`` requests
  at one card's speed; one request runs on one card.

The **bound** beside it is bandwidth alone (``bytes(1) / bandwidth`` of the busiest card, no
latency of any kind): a figure decode never reaches. The model's constant
``LAYER_LATENCY_US`` and the all-reduce constants are set from published measurements
(docs/fit.md, "A second card"; ``benchmarks/second_card.py`` prints each row beside the model).
It counts memory traffic and latency, not arithmetic: at large concurrency, where decode
becomes compute-bound, its aggregate throughput is an upper bound.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

from pytest_gpufit.fit.estimate import (
    KV_DTYPES,
    check_precision,
    kv_cache_bytes,
    role_bytes,
)
from pytest_gpufit.fit.link_time import US, LinkPath, allreduce_seconds, send_seconds
from pytest_gpufit.fit.spec import ModelSpec

# Fixed time per decoder layer per step: gpt-oss-20b (MXFP4, 24 layers) decodes one request at
# 250.0 tok/s on one RTX PRO 6000 at 1K context (pcie-decode.tsv:42): 4.0 ms a token, of which
# the 3.735 GB it reads take 2.084 ms at 1,792 GB/s; the rest over its 24 layers.
LAYER_LATENCY_US = (1 / 250.0 - 3.735e9 / 1792e9) / 24 / US  # 79.8 us
# Collectives a tensor-parallel step waits for besides two per layer: the vocab-parallel
# embedding's all-reduce and the logits' gather.
EXTRA_COLLECTIVES = 2


@dataclass(frozen=True)
class ModelReads:
    """What one copy of a model reads per decode step, in bytes."""

    dense: float  # every weight but the routed experts (attention, dense MLP, LM head, norms)
    experts: float  # all routed experts
    experts_count: int  # routed experts per MoE layer (0: dense model)
    top_k: int
    kv_per_request: float  # one request's KV cache at the context, every layer
    layers: int
    hidden: int
    act_bytes: int
    kv_heads: int
    mla: bool

    def kv_share(self, cards: int) -> float:
        """The share of a request's KV cache each of ``cards`` tensor-parallel ranks reads: its
        KV heads (at least one, as ``fit.estimate.kv_heads_per_rank``); MLA's latent is whole.

        >>> ModelReads(0, 0, 0, 0, 0, 64, 5120, 2, 8, False).kv_share(2)
        0.5
        >>> ModelReads(0, 0, 0, 0, 0, 48, 2048, 2, 4, False).kv_share(8)
        0.25
        """
        if self.mla or cards <= 1:
            return 1.0
        return max(1, self.kv_heads // cards) / self.kv_heads


def model_reads(
    spec: ModelSpec, precision: str, context: int, kv_dtype: str | None = None
) -> ModelReads:
    """The bytes a decode step of ``spec`` reads, split by what scales how.

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> r = model_reads(load_spec("qwen3-30b-a3b"), "bf16", 8192)
    >>> r.experts_count, r.top_k, round(r.dense / 1e9, 2), round(r.experts / 1e9, 1)
    (128, 8, 2.46, 58.0)
    >>> round(r.kv_per_request / 2**30, 2)  # 96 KiB a token, 8,192 tokens
    0.75
    """
    precision = check_precision(precision)
    roles = role_bytes(spec, precision)
    p = spec.params
    tied_row = 0.0 if p.tied else roles["embedding"]  # one embedding row per token, not all
    dense = sum(roles.values()) - roles["experts"] - tied_row
    count = round(p.experts * spec.experts_per_token / p.experts_active) if p.experts else 0
    act = 4 if precision == "fp32" else 2
    kv_b = KV_DTYPES[kv_dtype or ("fp32" if precision == "fp32" else "bf16")]
    return ModelReads(
        dense=dense,
        experts=roles["experts"],
        experts_count=count,
        top_k=spec.experts_per_token,
        kv_per_request=kv_cache_bytes(spec, context, 1, kv_b),
        layers=spec.num_layers,
        hidden=spec.hidden_size,
        act_bytes=act,
        kv_heads=spec.num_kv_heads,
        mla=spec.kv.kind == "mla",
    )


def distinct_experts(experts: int, top_k: int, tokens: float) -> float:
    """Expected routed experts a step of ``tokens`` tokens touches per MoE layer, each token
    choosing ``top_k`` of ``experts`` (taken as independent and uniform).

    >>> distinct_experts(128, 8, 1), round(distinct_experts(128, 8, 16), 1)
    (8.0, 82.4)
    >>> distinct_experts(0, 0, 4)
    0.0
    """
    if not experts:
        return 0.0
    if tokens <= 1:
        return float(top_k)
    return float(experts * (1 - (1 - top_k / experts) ** tokens))


@functools.lru_cache(maxsize=512)
def busiest_experts(touched: int, experts: int, cards: int) -> float:
    """Expected experts on the busiest of ``cards`` cards when a step touches ``touched`` of
    ``experts`` experts, each card holding ``experts / cards`` whole ones (expert parallel) and
    the touched ones drawn at random among all.

    >>> busiest_experts(8, 128, 1), round(busiest_experts(8, 128, 2), 2)
    (8.0, 5.06)
    >>> round(busiest_experts(82, 128, 2), 1), busiest_experts(128, 128, 2)
    (43.2, 64.0)
    """
    if cards <= 1 or touched <= 0:
        return float(touched)
    per_card = experts // cards
    touched = min(touched, per_card * cards)
    draws = math.comb(per_card * cards, touched)

    def at_most(m: int) -> float:
        """P(no card holds more than ``m`` of the touched experts)."""
        ways = [1] + [0] * touched  # ways[j]: ways to place j touched experts so far
        for _ in range(cards):
            nxt = [0] * (touched + 1)
            for j, w in enumerate(ways):
                if w:
                    for add in range(min(m, per_card, touched - j) + 1):
                        nxt[j + add] += w * math.comb(per_card, add)
            ways = nxt
        return ways[touched] / draws

    return float(sum(1 - at_most(m) for m in range(touched)))


@dataclass(frozen=True)
class DecodeEstimate:
    """Decode of one strategy: batch 1 and the aggregate at a concurrency (the model), the
    bandwidth bound, and what the step spends waiting on the link."""

    strategy: str
    cards: int
    batch1_tok_s: float  # model
    bound_tok_s: float  # bandwidth alone: a ceiling
    concurrency: int  # requests in flight for the aggregate (the user's, capped by the cache)
    aggregate_tok_s: float  # model: output tokens/s of all requests together
    per_request_tok_s: float  # model: each request's speed at that concurrency
    link_share: float  # of a batch-1 step, the time in collectives and sends
    allreduce: str  # one-shot | nccl | none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_seconds(reads: ModelReads, tokens: float, cards: int, bandwidth: float) -> float:
    """One tensor-parallel rank's read time at ``tokens`` requests in flight."""
    touched = distinct_experts(reads.experts_count, reads.top_k, tokens)
    experts = reads.experts * touched / reads.experts_count if reads.experts_count else 0.0
    weights = (reads.dense + experts) / cards
    kv = tokens * reads.kv_per_request * reads.kv_share(cards)
    return (weights + kv) / bandwidth


def _ep_read_seconds(reads: ModelReads, tokens: float, cards: int, bandwidth: float) -> float:
    """The busiest rank's read time under expert parallel: its whole experts."""
    touched = distinct_experts(reads.experts_count, reads.top_k, tokens)
    per_expert = reads.experts / reads.experts_count if reads.experts_count else 0.0
    experts = busiest_experts(round(touched), reads.experts_count, cards) * per_expert
    kv = tokens * reads.kv_per_request * reads.kv_share(cards)
    return (reads.dense / cards + experts + kv) / bandwidth


def step_seconds(
    strategy: str,
    reads: ModelReads,
    tokens: float,
    cards: int,
    bandwidth: float,
    path: LinkPath,
    allreduce: str,
) -> tuple[float, float]:
    """(seconds of one decode step at ``tokens`` requests in flight, of which on the link).

    For ``pp`` it is one token's way through every stage; for ``dp`` one replica's step.

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> reads = model_reads(load_spec("qwen3-32b"), "bf16", 8192)
    >>> bw, path = 1792e9, LinkPath("host-bridge", True)
    >>> one, _ = step_seconds("tp", reads, 1, 1, bw, path, "one-shot")
    >>> two, link = step_seconds("tp", reads, 1, 2, bw, path, "one-shot")
    >>> round(1 / one, 1), round(1 / two, 1), round(link / two, 2)
    (23.8, 41.1, 0.03)
    """
    layer_s = reads.layers * LAYER_LATENCY_US * US
    if strategy == "dp" or cards <= 1:
        return _read_seconds(reads, tokens, 1, bandwidth) + layer_s, 0.0
    message = tokens * reads.hidden * reads.act_bytes
    if strategy in ("tp", "ep"):
        read = (_ep_read_seconds if strategy == "ep" else _read_seconds)(
            reads, tokens, cards, bandwidth
        )
        calls = 2 * reads.layers + EXTRA_COLLECTIVES
        link = calls * allreduce_seconds(allreduce, cards, message, path)
        return read + layer_s + link, link
    if strategy == "pp":
        stage = _read_seconds(reads, tokens, 1, bandwidth) / cards + layer_s / cards
        link = (cards - 1) * send_seconds(message, path)
        return cards * stage + link, link
    raise ValueError(f"unknown strategy {strategy!r}")


def decode_estimate(
    strategy: str,
    reads: ModelReads,
    cards: int,
    bandwidth: float,
    path: LinkPath,
    allreduce: str,
    concurrency: int,
) -> DecodeEstimate:
    """Batch 1 and ``concurrency`` requests for ``strategy`` on ``cards`` cards.

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> reads = model_reads(load_spec("qwen3-30b-a3b"), "bf16", 8192)
    >>> path = LinkPath("host-bridge", True)
    >>> for way in ("tp", "pp", "dp", "ep"):
    ...     d = decode_estimate(way, reads, 2, 1792e9, path, "one-shot", 16)
    ...     print(way, round(d.batch1_tok_s), round(d.bound_tok_s), round(d.aggregate_tok_s))
    tp 158 520 832
    pp 130 260 732
    dp 130 260 732
    ep 151 457 811
    """
    way = "dp" if cards <= 1 else strategy  # one card: one copy, whatever it is called
    one, link = step_seconds(way, reads, 1, cards, bandwidth, path, allreduce)
    bound = _bound_seconds(way, reads, cards, bandwidth)
    c = max(1, concurrency)
    if way == "dp":
        # each copy serves c / n requests (one each when there are fewer than copies)
        step, _ = step_seconds("dp", reads, max(1.0, c / cards), 1, bandwidth, path, allreduce)
        aggregate = c / step
    elif way == "pp":
        if c < cards:
            aggregate = c / one
        else:
            micro = c / cards
            whole, _ = step_seconds("dp", reads, micro, 1, bandwidth, path, allreduce)
            send = send_seconds(micro * reads.hidden * reads.act_bytes, path)
            aggregate = micro / (whole / cards + send)  # one micro-batch leaves per stage time
    else:
        step, _ = step_seconds(way, reads, c, cards, bandwidth, path, allreduce)
        aggregate = c / step
    return DecodeEstimate(
        strategy=strategy,
        cards=cards,
        batch1_tok_s=round(1 / one, 1),
        bound_tok_s=round(1 / bound, 1),
        concurrency=c,
        aggregate_tok_s=round(aggregate, 1),
        per_request_tok_s=round(aggregate / c, 1),
        link_share=round(link / one, 4),
        allreduce="none" if way in ("dp", "pp") else allreduce,
    )


def _bound_seconds(strategy: str, reads: ModelReads, cards: int, bandwidth: float) -> float:
    """Batch 1, bandwidth alone: the busiest card's bytes (all of them, one after the other,
    for PP: a token goes through every stage)."""
    if strategy == "dp" or cards <= 1 or strategy == "pp":
        return _read_seconds(reads, 1, 1, bandwidth)
    if strategy == "ep":
        return _ep_read_seconds(reads, 1, cards, bandwidth)
    return _read_seconds(reads, 1, cards, bandwidth)
