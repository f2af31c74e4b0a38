"""Every way to use N cards, as an engine's memory plan: tensor parallel (``tp``), pipeline
parallel (``pp``), N independent replicas behind a router (``dp``) and, for an MoE model,
expert parallel (``ep``: tensor-parallel attention, whole experts spread over the cards).

One function per strategy over the same ``Engine`` (docs/architecture.md, Engines), each
returning a ``StrategyPlan`` that holds the ``EnginePlan`` of every distinct card:

- ``tp``: the engine's own plan over N cards (``planning.plan``).
- ``pp``: one plan per stage. Each stage is the model cut to its layers (``stage_specs``, vLLM's
  ``get_pp_indices`` split): its layers' weights and KV cache, the embedding on the first, the
  LM head and the sampler on the last. vLLM sizes one KV cache for all stages, by the stage
  with the fewest blocks: its tokens and concurrency are the setup's.
- ``dp``: the one-card plan, N times; each replica logs its own KV cache.
- ``ep``: the tensor-parallel plan (the experts take the same bytes per card, whole instead of
  sliced); what differs is the decode (``fit.decode_time``).

Which of them an engine offers, and how it is launched for each, is its ``parallelism``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.engines.planning import plan
from pytest_gpufit.engines.protocol import EngineKnobs, EnginePlan
from pytest_gpufit.engines.registry import engine
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.spec import KvLayout, ModelSpec
from pytest_gpufit.hardware.records import Gpu

STRATEGIES = ("tp", "pp", "dp", "ep")  # the order the upgrade view lists them in
STRATEGY_NAMES = {
    "tp": "tensor parallel",
    "pp": "pipeline parallel",
    "dp": "replicas",
    "ep": "expert parallel",
}


def strategy_label(strategy: str, cards: int) -> str:
    """How the view names a strategy over ``cards`` cards.

    >>> strategy_label("tp", 2), strategy_label("dp", 2), strategy_label("ep", 2)
    ('TP 2', '2 replicas', 'TP 2 + EP')
    >>> strategy_label("tp", 1)
    '1 card'
    """
    if cards == 1:
        return "1 card"
    return {
        "tp": f"TP {cards}",
        "pp": f"PP {cards}",
        "dp": f"{cards} replicas",
        "ep": f"TP {cards} + EP",
    }[strategy]


@dataclass(frozen=True)
class StrategyPlan:
    """One way to run a model on ``cards`` cards: the plan of each distinct card (one for TP,
    EP and replicas; one per stage for PP) and what the setup holds as a whole."""

    strategy: str  # STRATEGIES
    label: str  # TP 2, PP 2, 2 replicas, TP 2 + EP, 1 card
    engine: str
    cards: int
    launch: str  # the engine's flags for it
    plans: tuple[EnginePlan, ...]
    replicas: int  # independent copies of the model (N for dp, else 1)
    kv_cache_tokens: int  # per copy, as the engine logs it ("GPU KV cache size")
    max_concurrency: float  # requests of max_model_len the whole setup holds at once
    starts: bool
    reason: str | None

    @property
    def busiest(self) -> EnginePlan:
        """The card with the least KV cache left: the one that limits the setup."""
        return min(self.plans, key=lambda p: (p.kv_cache_bytes_per_gpu, -p.weights_bytes_per_gpu))

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "label": self.label,
            "engine": self.engine,
            "cards": self.cards,
            "launch": self.launch,
            "replicas": self.replicas,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrency": self.max_concurrency,
            "starts": self.starts,
            "reason": self.reason,
            "plans": [p.to_dict() for p in self.plans],
        }


def offered(engine_name: str, spec: ModelSpec, cards: int) -> tuple[str, ...]:
    """The strategies ``engine_name`` offers for ``spec`` on ``cards`` cards, in view order:
    expert parallel only for an MoE model; one card has one way.

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> offered("vllm", load_spec("qwen3-30b-a3b"), 2)
    ('tp', 'pp', 'dp', 'ep')
    >>> offered("vllm", load_spec("qwen3-32b"), 2), offered("llama.cpp", load_spec("qwen3-32b"), 2)
    (('tp', 'pp', 'dp'), ('pp', 'dp'))
    >>> offered("vllm", load_spec("qwen3-32b"), 1)
    ('tp',)
    """
    the_engine = engine(engine_name)
    if cards == 1:
        return (the_engine.split_strategy,)
    ways = [s for s in STRATEGIES if s in the_engine.parallelism]
    return tuple(s for s in ways if s != "ep" or spec.is_moe)


def pipeline_layers(layers: int, stages: int) -> list[int]:
    """Decoder layers per stage, as vLLM's ``get_pp_indices`` splits them: evenly, the
    remainder to the stages before the last (which also holds the LM head).

    >>> pipeline_layers(64, 2), pipeline_layers(48, 5), pipeline_layers(7, 3)
    ([32, 32], [9, 10, 10, 10, 9], [2, 3, 2])
    """
    if not 1 <= stages <= layers:
        raise GpufitError(
            f"pipeline parallel: {stages} stages for {layers} layers; use at most one stage "
            "per layer"
        )
    parts = [layers // stages] * stages
    for i in range(2, layers % stages + 2):
        parts[-i] += 1
    return parts


def stage_specs(spec: ModelSpec, stages: int) -> list[ModelSpec]:
    """The model cut into pipeline stages: each stage's share of the layer weights and KV cache,
    the embedding on the first stage, the LM head (a tied embedding's copy too) on the last.
    A stage before the last computes no logits: its ``vocab_size`` is 0, so no sampler pass
    is planned there (vLLM samples on the last rank only). An exact checkpoint figure is not
    split by layer: the stages are counted from the config.

    >>> from pytest_gpufit.fit.spec import load_spec
    >>> first, last = stage_specs(load_spec("qwen3-32b"), 2)
    >>> first.num_layers, last.num_layers, first.params.lm_head, last.params.embedding
    (32, 32, 0, 0)
    >>> first.params.attention + last.params.attention == load_spec("qwen3-32b").params.attention
    True
    """
    p = spec.params
    shares = pipeline_layers(spec.num_layers, stages)
    full = spec.kv.full_layers
    specs = []
    done = 0
    for i, layers in enumerate(shares):
        first, last = i == 0, i == stages - 1
        part = functools.partial(_share, start=done, size=layers, total=spec.num_layers)
        lm_head = (p.lm_head or (p.embedding if p.tied else 0)) if last else 0
        params = dataclasses.replace(
            p,
            embedding=p.embedding if first else 0,
            lm_head=lm_head,
            attention=part(p.attention),
            dense_mlp=part(p.dense_mlp),
            experts=part(p.experts),
            experts_active=part(p.experts_active),
            shared_experts=part(p.shared_experts),
            router=part(p.router),
            norms=part(p.norms),
            attention_kv=part(p.attention_kv),
            attention_replicated=part(p.attention_replicated),
            tied=False,
            mtp=0,
        )
        full_here = part(full)
        kv = KvLayout(
            spec.kv.elements_per_token_layer,
            full_here,
            layers - full_here,
            spec.kv.window,
            spec.kv.kind,
        )
        specs.append(
            dataclasses.replace(
                spec,
                name=f"{spec.name} (stage {i + 1}/{stages})",
                num_layers=layers,
                vocab_size=spec.vocab_size if last else 0,
                params=params,
                kv=kv,
                checkpoint=None,
            )
        )
        done += layers
    return specs


def _share(count: int, start: int, size: int, total: int) -> int:
    """Layers ``start..start+size`` of ``total``'s share of a per-layer ``count``, in whole
    numbers that add up over the stages.

    >>> [_share(10, s, 1, 3) for s in range(3)]
    [3, 3, 4]
    """
    return count * (start + size) // total - count * start // total


def plan_strategy(
    strategy: str,
    spec: ModelSpec,
    precision: str,
    gpu: Gpu,
    cards: int,
    knobs: EngineKnobs,
) -> StrategyPlan:
    """``strategy`` for ``spec`` on ``cards`` cards like ``gpu``; a strategy the engine does not
    offer, or a split it cannot make (TP 3 over 32 heads), is a ``GpufitError``.

    >>> from pytest_gpufit.engines.knobs import parse_knobs
    >>> from pytest_gpufit.fit.spec import load_spec
    >>> from pytest_gpufit.hardware.catalog import catalog_gpu
    >>> spec, gpu = load_spec("qwen3-30b-a3b"), catalog_gpu("rtx-pro-6000")
    >>> knobs = parse_knobs("vllm", max_model_len=8192)
    >>> one = plan_strategy("tp", spec, "bf16", gpu, 1, knobs)
    >>> one.kv_cache_tokens, one.max_concurrency
    (278784, 34.03)
    >>> two = plan_strategy("dp", spec, "bf16", gpu, 2, knobs)
    >>> two.label, two.kv_cache_tokens, two.max_concurrency
    ('2 replicas', 278784, 68.06)
    """
    the_engine = engine(knobs.engine)
    launch = the_engine.parallelism.get(strategy)
    if launch is None and not (cards == 1 and strategy == the_engine.split_strategy):
        raise GpufitError(
            f"{knobs.engine} offers no {STRATEGY_NAMES.get(strategy, strategy)} "
            f"(its ways: {', '.join(the_engine.parallelism) or 'none'})"
        )
    label = strategy_label(strategy, cards)
    launch = (launch or "").format(n=cards) if cards > 1 else ""
    if strategy in ("tp", "ep") or (strategy == the_engine.split_strategy):
        one = plan(spec, precision, gpu, cards, knobs)
        return _whole(strategy, label, knobs.engine, cards, launch, (one,), 1)
    if strategy == "dp":
        one = plan(spec, precision, gpu, 1, knobs)
        return _whole(strategy, label, knobs.engine, cards, launch, (one,), cards)
    if strategy == "pp":
        stages = tuple(plan(s, precision, gpu, 1, knobs) for s in stage_specs(spec, cards))
        return _whole(strategy, label, knobs.engine, cards, launch, stages, 1)
    raise GpufitError(f"unknown parallel strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def _whole(
    strategy: str,
    label: str,
    engine_name: str,
    cards: int,
    launch: str,
    plans: tuple[EnginePlan, ...],
    replicas: int,
) -> StrategyPlan:
    reason = next((p.reason for p in plans if not p.starts), None)
    starts = reason is None
    # One KV cache sized by the stage with the fewest tokens (vLLM's min over workers).
    tokens = min(p.kv_cache_tokens for p in plans) if starts else 0
    concurrency = round(min(p.max_concurrency for p in plans) * replicas, 2) if starts else 0.0
    return StrategyPlan(
        strategy=strategy,
        label=label,
        engine=engine_name,
        cards=cards,
        launch=launch,
        plans=plans,
        replicas=replicas,
        kv_cache_tokens=tokens,
        max_concurrency=concurrency,
        starts=starts,
        reason=reason,
    )
