"""The checks of a server (``serves``, ``load``): what a client of the server sees.

Each runner asks the target's ``Serve`` capability (``ctx.server()``: the openai backend's
handle), records figures in ``ctx.metrics`` and unmet expectations in ``ctx.failures``. No HTTP
client here: the handle asks the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_gpufit.backends.capabilities import Serve
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.logs import hold_against_plan
from pytest_gpufit.metrics import level_figures
from pytest_gpufit.serving.facts import read_engine_log
from pytest_gpufit.suites.context import Context
from pytest_gpufit.units import GIB

if TYPE_CHECKING:
    from pytest_gpufit.serving.load import LevelResult, Slo

_SLO_SOURCE = {"ttft": "ttft_ms", "tpot": "tpot_ms", "itl": "itl_ms", "e2el": "e2el_ms"}


def run_serves_check(ctx: Context, params: dict[str, Any]) -> None:
    """The ``serves`` check: see ``run_serves``."""
    run_serves(ctx, ctx.server(), params)


def run_serves(ctx: Context, served: Serve, params: dict[str, Any]) -> None:
    """The server answers, lists the model, and (where it says) serves the target's context."""
    ctx.metrics.update(served_model=served.model, endpoint=served.base_url)
    if served.startup_s is not None:
        ctx.metrics["startup_seconds"] = round(served.startup_s, 2)
    if served.server is not None and served.server.pgid is not None:
        ctx.metrics["server_pgid"] = served.server.pgid  # for whoever checks it was stopped
    length = served.max_model_len()
    if length is not None:
        ctx.metrics["max_model_len"] = length
        context = ctx.target.context
        ctx.expect(
            context is None or length >= context,
            f"the server's max_model_len {length} < the target's context {context}",
        )
    allocation = served.allocation()
    if allocation is not None and allocation.lines:
        for key in ("weights_gib", "kv_cache_gib", "kv_cache_tokens", "max_concurrency"):
            value = getattr(allocation, key)
            if value is not None:
                ctx.metrics[f"engine_{key}"] = value
        if ctx.target.model is not None and allocation.weights_gib is not None:
            # Next to the fit engine's prediction for the same model and dtype.
            try:
                est = ctx.estimate()
            except GpufitError as error:
                ctx.metrics["estimate_error"] = str(error)
            else:
                ctx.metrics["estimate_weights_bytes"] = est.weights_bytes
                ctx.metrics["estimate_total_bytes"] = est.total_bytes
                ctx.metrics["engine_weights_vs_estimate"] = round(
                    allocation.weights_gib * GIB / est.weights_bytes - 1, 4
                )
        _against_plan(ctx, served)


def _against_plan(ctx: Context, served: Serve) -> None:
    """The launched engine's log held against the engine plan for the setup the log states
    (engine, tensor parallel, knobs) on the judged card: ``plan_*`` is the prediction and
    ``engine_*_vs_plan`` the plan's error (0.02: 2% high). Recorded, not judged."""
    path = getattr(served, "log_path", None)
    if path is None or ctx.target.model is None or ctx.gpu is None:
        return
    try:
        log = read_engine_log(path.read_text("utf-8", "replace"))
        plan, figures = hold_against_plan(log, ctx.spec, ctx.target.dtype, ctx.gpu)
    except (GpufitError, OSError) as error:
        ctx.metrics["plan_error"] = str(error)
        return
    ctx.metrics.update(
        plan_engine=plan.name, plan_starts=plan.starts, plan_tensor_parallel=plan.tensor_parallel
    )
    for figure in figures:
        ctx.metrics[f"plan_{figure.key}"] = round(figure.predicted, 4)
        if figure.error is not None:  # a log figure of 0 has no ratio; an inf would fail the check
            ctx.metrics[f"engine_{figure.key}_vs_plan"] = round(figure.error, 4)


def level_key(level: Any) -> str:
    """``c8`` for concurrency 8, ``r2.5`` for a rate of 2.5 req/s: a level's metric prefix.

    >>> from types import SimpleNamespace as N
    >>> level_key(N(rate=None, concurrency=8)), level_key(N(rate=2.5, concurrency=8))
    ('c8', 'r2.5')
    """
    return f"r{level.rate:g}" if level.rate is not None else f"c{level.concurrency}"


def goodput_slo(slo: dict[str, float]) -> Slo:
    """The per-request objectives behind goodput: each metric's loosest bound (a p99 bound is
    what 99% of requests must meet, so it is the per-request bound); ITL by a request's mean
    time per output token."""
    from pytest_gpufit.serving.load import Slo  # light: no HTTP client

    def bound(*metrics: str) -> float | None:
        values = [v for k, v in slo.items() if k.split("_ms_")[0] in metrics]
        return max(values) if values else None

    return Slo(ttft_ms=bound("ttft"), tpot_ms=bound("tpot", "itl"), e2e_ms=bound("e2el"))


# A first token later than a one-token answer's by more than twice this, and than twice the
# whole decode that followed it, was held until the rest was made (TTFT jitter on a busy CPU
# server is tens of ms; a proxy that re-paces a held stream adds the server's whole decode).
HELD_FIRST_TOKEN_MS = 50.0


def held_first_token(ttft_ms: float, alone_ms: float, decode_ms: float) -> str | None:
    """Why a served stream's first token was held while the rest was made, or None: where
    nothing queues, a one-token answer to a prompt of the same length (``alone_ms``) waits for
    the same prefill, so a first token later than that by more than twice
    ``HELD_FIRST_TOKEN_MS`` and twice the whole decode after it was held, and the stream
    re-paced (each write 0.1 ms apart or more is no burst).

    >>> print(held_first_token(625.0, 5.0, 40.0).split(";")[0])  # doctest: +NORMALIZE_WHITESPACE
    held: the first token came 620 ms later than a one-token answer's to a prompt of the same
    length (TTFT 625.0 ms against 5.0 ms), and the decode after it took only 40.0 ms: the tokens
    were held until the rest were made and re-paced
    >>> held_first_token(305.0, 300.0, 75.0) is None  # a slow prefill, both alike
    True
    """
    held = ttft_ms - alone_ms
    if held <= 2 * max(decode_ms, HELD_FIRST_TOKEN_MS):
        return None
    return (
        f"held: the first token came {held:.0f} ms later than a one-token answer's to a prompt "
        f"of the same length (TTFT {ttft_ms:.1f} ms against {alone_ms:.1f} ms), and the decode "
        f"after it took only {decode_ms:.1f} ms: the tokens were held until the rest were made "
        "and re-paced; is a proxy in front of the server? (decode tok/s, ITL and TPOT would be "
        "the proxy's pace, not the server's)"
    )


def one_token_ttft_ms(served: Serve, text: str) -> float:
    """The median TTFT of three one-token answers, each to ``text`` made a prompt of its own.
    The one token needs no text (it may be part of a character, or a special token the server
    skips): its TTFT is its event's."""
    # late: the prompt helpers import the HTTP client, loaded once a server is asked
    from pytest_gpufit.serving.prompts import unique_prompt

    times = []
    for _ in range(3):
        prompt = unique_prompt(text, next(served.keys))
        request = served.request(prompt, 1, ignore_eos=True, need_content=False)
        times.append(served.stream(request).ttft_s * 1000)
    return sorted(times)[1]


def run_load(ctx: Context, params: dict[str, Any]) -> None:
    """Concurrency levels (or request rates) of streamed requests: TTFT, ITL, E2E percentiles
    and goodput per level, against the SLOs."""
    # late: the prompt helpers import the HTTP client, loaded once a server is asked
    from pytest_gpufit.serving.prompts import distinct_prompts

    served = ctx.server()
    prompt = served.prompt(params["prompt_tokens"], params["timeout_s"])
    request = served.request(
        prompt.text, params["new_tokens"], ignore_eos=True, timeout_s=params["timeout_s"]
    )
    slo = params.get("slo", {})
    levels_asked = len(params.get("concurrency") or ([] if "rate" in params else [1]))
    planned = params["requests"] * (levels_asked + len(params.get("rate", [])))
    room = distinct_prompts(prompt.text) if params["prompts"] == "unique" else None
    if room is not None and planned > room:
        # Sent again, a prompt is answered from a cache (a prefix cache, a replayed answer).
        words = len(prompt.text.split(" "))
        ctx.failures.append(
            f"prompts: unique: a prompt of {prompt.tokens} tokens is {words} word"
            f"{'s' if words != 1 else ''}, room for {room:,} prompts of its own, and this load "
            f"sends up to {planned:,}; raise prompt_tokens, or say prompts: shared"
        )
        return
    levels = served.load(
        request,
        params.get("concurrency") or ([] if "rate" in params else [1]),
        params.get("rate", []),
        params["requests"],
        params["max_seconds"],
        goodput_slo(slo) if slo else None,
        ctx.progress,
        params["prompts"],
    )
    table: dict[str, dict[str, Any]] = {}
    alone = one_token_ttft_ms(served, prompt.text) if any(_alone(lv) for lv in levels) else None
    for level in levels:
        key = level_key(level)
        figures = level.metrics()
        table[level.name] = {k: round(v, 4) for k, v in figures.items()}
        if level.errors:
            table[level.name]["first_errors"] = list(level.errors)
        ctx.metrics.update(level_figures(key, figures))
        _judge_level(ctx, level, figures, params, slo)
        if alone is not None and _alone(level) and level.paced_ms is not None:
            # The streams that arrived paced: a burst (the server's own, on a busy CPU) has
            # its first token late with the rest, and is counted as buffered already.
            ttft, decode = level.paced_ms
            held = held_first_token(ttft, alone, decode)
            if held is not None:  # a queue at concurrency 1 is none: the first token was held
                ctx.failures.append(f"{level.name}: {held}")
    ctx.metrics["levels"] = table
    ctx.metrics["prompt_tokens"] = prompt.tokens
    ctx.metrics["prompts"] = params["prompts"]


def _alone(level: LevelResult) -> bool:
    """A level of one request at a time that all answered: no queue stands between its
    prefill and its TTFT (a level with failures is judged on those)."""
    alone = level.concurrency == 1 and level.rate is None
    return alone and level.completed > 0 and not level.failed


def _judge_level(
    ctx: Context,
    level: LevelResult,
    figures: dict[str, float],
    params: dict[str, Any],
    slo: dict[str, float],
) -> None:
    name = level.name
    why = f"; first error: {level.errors[0]}" if level.errors else ""
    if level.completed == 0:
        ctx.failures.append(f"{name}: no request completed of {level.sent}{why}")
        return
    if "max_error_rate" in params and level.error_rate > params["max_error_rate"]:
        ctx.failures.append(
            f"{name}: error rate {level.error_rate:.1%} > max_error_rate "
            f"{params['max_error_rate']:.1%} ({level.failed} of {level.sent} failed{why})"
        )
    elif "max_error_rate" not in params and level.failed:
        ctx.failures.append(
            f"{name}: {level.failed} of {level.sent} requests failed (set max_error_rate to "
            f"allow some){why}"
        )
    for key, bound in slo.items():
        metric, _, stat = key.partition("_ms_")
        source = f"{'median' if stat == 'p50' else stat}_{_SLO_SOURCE[metric]}"
        value = figures.get(source)
        # A buffered stream gives no gaps, only their worst case (all its tokens were made
        # within its E2E): a percentile of the others is the level's only while the streams
        # that may have missed the bound are no more than the share the percentile leaves out
        # (a server that bursts on most of its answers is not judged on the few it paced).
        left_out = 1 - float(stat.removeprefix("p")) / 100 if stat.startswith("p") else 0.0
        worst = [w[1] if metric == "tpot" else w[0] for w in level.buffered_worst_ms]
        unknown = sum(1 for w in worst if w > bound) if metric in ("itl", "tpot") else 0
        if value is None and worst and not unknown:
            pass  # every stream buffered, but none could have missed so loose a bound
        elif value is None:
            ctx.failures.append(f"{name}: SLO {key} {bound:g} ms: not measured (no {metric} data)")
        elif unknown > left_out * level.completed:
            ctx.failures.append(
                f"{name}: SLO {key} {bound:g} ms: {unknown} of {level.completed} streams "
                f"arrived buffered and may have missed it (made within an E2E over "
                f"{bound:g} ms{' a token' if metric == 'tpot' else ''}), more than the "
                f"{left_out:.0%} of them a {stat} leaves out, so the {metric.upper()} of the "
                f"others is not the level's ({level.buffered_reason})"
            )
        elif value > bound:
            ctx.failures.append(f"{name}: {key} {value:.1f} ms > SLO {key} {bound:g} ms")
    if level.short:
        ctx.failures.append(
            f"{name}: {level.short} of {level.completed} answers stopped short of new_tokens "
            f"({level.short_reason}): the server ignores ignore_eos; output tok/s, TPOT and "
            "goodput are measured on exactly new_tokens (README: 'A server that stops early')"
        )
    if "min_goodput" in params and level.goodput < params["min_goodput"]:
        ctx.failures.append(
            f"{name}: goodput {level.goodput:.1%} < min_goodput {params['min_goodput']:.1%} "
            f"(requests meeting every SLO of {level.sent} sent)"
        )
