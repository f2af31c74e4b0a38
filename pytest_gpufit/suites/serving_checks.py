"""The checks of a served target (``backend: openai``): what a client of the server sees.

Each runner takes the check's context and the target's ``Served`` handle (the openai backend),
records figures in ``ctx.metrics`` and unmet expectations in ``ctx.failures``. No HTTP client
here: the handle asks the server.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.measure import repeat
from pytest_gpufit.suites.limits import expect_throughput_limits
from pytest_gpufit.units import GIB

# Per-level figures kept as baseline metrics (see pytest_gpufit.baseline.compare.LEVEL_METRICS):
# name -> the LevelResult.metrics() key it comes from
LEVEL_FIGURES = {
    "ttft_ms_p50": "median_ttft_ms",
    "ttft_ms_p99": "p99_ttft_ms",
    "itl_ms_p99": "p99_itl_ms",
    "goodput": "goodput",
    "output_tok_s": "output_throughput",
}
_SLO_SOURCE = {"ttft": "ttft_ms", "tpot": "tpot_ms", "itl": "itl_ms", "e2el": "e2el_ms"}


def run_serves(ctx: Any, served: Any, params: dict[str, Any]) -> None:
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


def _against_plan(ctx: Any, served: Any) -> None:
    """The launched engine's log held against the engine plan for the setup the log states
    (engine, tensor parallel, knobs) on the judged card: ``plan_*`` is the prediction and
    ``engine_*_vs_plan`` the plan's error (0.02: 2% high). Recorded, not judged."""
    path = getattr(served, "log_path", None)
    if path is None or ctx.target.model is None or ctx.gpu is None:
        return
    from pytest_gpufit.fit.logs import hold_against_plan
    from pytest_gpufit.serving.facts import read_engine_log

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


def _prompt(served: Any, params: dict[str, Any]) -> tuple[str, int | None]:
    if "prompt" in params:
        return str(params["prompt"]), None
    sized = served.prompt(int(params["prompt_tokens"]), params.get("timeout_s", 120.0))
    return sized.text, sized.tokens


def run_generates(ctx: Any, served: Any, params: dict[str, Any]) -> None:
    text, counted = _prompt(served, params)
    asked = params["max_new_tokens"]
    result = served.stream(served.request(text, asked))
    produced = result.completion_tokens
    ctx.metrics.update(
        new_tokens=produced if produced is not None else result.content_chunks,
        single_run_ttft_ms=round(result.ttft_s * 1000, 2),
        text=result.text,
        finish_reason=result.finish_reason,
    )
    if counted is not None:
        ctx.metrics["prompt_tokens"] = counted
    if "expect_contains" in params:
        ctx.expect(
            params["expect_contains"] in result.text,
            f"output {result.text!r} does not contain {params['expect_contains']!r}",
        )


def run_throughput(ctx: Any, served: Any, params: dict[str, Any]) -> None:
    """Streamed TTFT, ITL and E2E per run; decode counts the server's own usage tokens."""
    text, counted = _prompt(served, params)
    new_n = params["new_tokens"]
    request = served.request(text, new_n, ignore_eos=True)
    short: list[int] = []

    def one_round() -> dict[str, float]:
        r = served.stream(request)
        tokens = r.completion_tokens if r.completion_tokens is not None else r.content_chunks
        if tokens < new_n:
            short.append(tokens)
        decode_s = r.e2e_s - r.ttft_s
        prompt = r.prompt_tokens or counted or 0
        out = {
            "ttft_ms": r.ttft_s * 1000,
            "e2e_ms": r.e2e_s * 1000,
            "prefill_tok_s": prompt / r.ttft_s if r.ttft_s > 0 else 0.0,
            "decode_tok_s": (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0,
        }
        if r.itl_s:
            out["itl_ms_p99"] = _p99(r.itl_s) * 1000
        return out

    stats = repeat(one_round, params["warmup"], params["repeats"])
    for name, spread in stats.items():
        ctx.metrics[name] = round(spread.median, 2)
        ctx.metrics[f"{name}_spread"] = round(spread.relative_spread, 4)
    ctx.metrics["repeats"] = params["repeats"]
    if counted is not None:
        ctx.metrics["prompt_tokens"] = counted
    if short:
        # The server stopped early (no ignore_eos): the rates count the tokens it did produce.
        ctx.metrics["short_runs"] = len(short)
        ctx.metrics["note"] = (
            f"{len(short)} of {params['warmup'] + params['repeats']} runs produced fewer than "
            f"{new_n} tokens (fewest {min(short)}); the server ignored ignore_eos or stopped at "
            "EOS, so rates count the tokens it produced"
        )
    expect_throughput_limits(
        ctx,
        params,
        stats,
        lambda m: f"median of {params['repeats']} streamed requests, as the client sees them",
    )


def _p99(values: Any) -> float:
    """The 99th percentile, interpolated linearly as numpy's default (and serving.load) do.

    >>> _p99([1.0]), round(_p99([1.0, 2.0, 3.0]), 2)
    (1.0, 2.98)
    """
    values = list(values)
    if len(values) < 2:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[98])


def level_key(level: Any) -> str:
    """``c8`` for concurrency 8, ``r2.5`` for a rate of 2.5 req/s: a level's metric prefix.

    >>> from types import SimpleNamespace as N
    >>> level_key(N(rate=None, concurrency=8)), level_key(N(rate=2.5, concurrency=8))
    ('c8', 'r2.5')
    """
    return f"r{level.rate:g}" if level.rate is not None else f"c{level.concurrency}"


def goodput_slo(slo: dict[str, float]) -> Any:
    """The per-request objectives behind goodput: each metric's loosest bound (a p99 bound is
    what 99% of requests must meet, so it is the per-request bound); ITL by a request's mean
    time per output token."""
    from pytest_gpufit.serving.load import Slo  # light: no HTTP client

    def bound(*metrics: str) -> float | None:
        values = [v for k, v in slo.items() if k.split("_ms_")[0] in metrics]
        return max(values) if values else None

    return Slo(ttft_ms=bound("ttft"), tpot_ms=bound("tpot", "itl"), e2e_ms=bound("e2el"))


def run_load(
    ctx: Any, served: Any, params: dict[str, Any], progress: Callable[[str], None] | None
) -> None:
    text, counted = _prompt(served, params)
    request = served.request(
        text, params["new_tokens"], ignore_eos=True, timeout_s=params["timeout_s"]
    )
    slo = params.get("slo", {})
    levels = served.load(
        request,
        params.get("concurrency") or ([] if "rate" in params else [1]),
        params.get("rate", []),
        params["requests"],
        params["max_seconds"],
        goodput_slo(slo) if slo else None,
        progress,
    )
    table = {}
    for level in levels:
        key = level_key(level)
        figures = level.metrics()
        table[level.name] = {k: round(v, 4) for k, v in figures.items()}
        if level.errors:
            table[level.name]["first_errors"] = list(level.errors)
        for name, source in LEVEL_FIGURES.items():
            if source in figures:
                ctx.metrics[f"{key}_{name}"] = round(figures[source], 4)
        _judge_level(ctx, level, figures, params, slo)
    ctx.metrics["levels"] = table
    if counted is not None:
        ctx.metrics["prompt_tokens"] = counted


def _judge_level(
    ctx: Any, level: Any, figures: dict[str, float], params: dict[str, Any], slo: dict[str, float]
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
        if value is None:
            ctx.failures.append(f"{name}: SLO {key} {bound:g} ms: not measured (no {metric} data)")
        elif value > bound:
            ctx.failures.append(f"{name}: {key} {value:.1f} ms > SLO {key} {bound:g} ms")
    if "min_goodput" in params and level.goodput < params["min_goodput"]:
        ctx.failures.append(
            f"{name}: goodput {level.goodput:.1%} < min_goodput {params['min_goodput']:.1%} "
            f"(requests meeting every SLO of {level.sent} sent)"
        )


def run_golden(ctx: Any, served: Any, params: dict[str, Any]) -> None:
    """Greedy tokens and the server's top-k logprobs, in the golden record's shape."""
    text, _ = _prompt(served, params)
    k = params["top_k"]
    result = served.stream(served.request(text, params["new_tokens"], logprobs=k))
    if not result.logprobs:
        raise GpufitError(
            f"the server at {served.base_url} returned no logprobs (asked for top {k}); "
            "precision over HTTP needs a server that returns them (vLLM, SGLang and "
            "llama-server do; transformers serve does not)"
        )
    tokens, top_ids, top_logprobs = [], [], []
    for step in result.logprobs:
        top = dict(step.top)
        top.setdefault(step.token, step.logprob)  # the chosen token belongs to its top list
        tokens.append(step.token)
        top_ids.append(list(top))
        top_logprobs.append([round(v, 6) for v in top.values()])
    ctx.metrics["golden"] = {"tokens": tokens, "top_ids": top_ids, "top_logprobs": top_logprobs}
    ctx.metrics["golden_max_logprob_diff"] = params["max_logprob_diff"]


def run_served_check(
    ctx: Any, served: Any, kind: str, params: dict[str, Any], progress: Any = None
) -> None:
    """Run one check of a served target; a server fault is a failure naming its log."""
    engine = served.engine_text()
    if engine:
        ctx.metrics["engine"] = engine
    if served.log_path is not None:
        ctx.metrics["server_log"] = str(served.log_path)
    try:
        if kind == "serves":
            run_serves(ctx, served, params)
        elif kind == "generates":
            run_generates(ctx, served, params)
        elif kind == "throughput":
            run_throughput(ctx, served, params)
        elif kind == "load":
            run_load(ctx, served, params, progress)
        elif kind == "precision":
            run_golden(ctx, served, params)
        else:  # the schema refuses the others for this backend
            raise GpufitError(f"the openai backend has no {kind} check")
    except GpufitError as error:
        ctx.failures.append(str(error))
    ctx.failures.extend(served.forbidden())
    if ctx.failures:
        gone = served.exited()
        if gone:
            tail = served.log_text(15)
            ctx.failures.append(f"{gone}; last lines of {served.log_path}:\n{tail}")
        elif served.log_path is not None:
            ctx.failures.append(f"server log: {served.log_path}")
