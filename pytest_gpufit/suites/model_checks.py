"""What the model checks do: fits (an estimate), loads, generates, throughput and precision.

Each is written once over the backend capabilities its kind needs
(``pytest_gpufit.backends.capabilities``), records figures in ``ctx.metrics`` and unmet
expectations in ``ctx.failures``; a failure that stops the check raises ``CheckFailed`` with the
measured figure in the message.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from pytest_gpufit.backends.capabilities import Generated, Prompt
from pytest_gpufit.fit.estimate import estimate, fit_on
from pytest_gpufit.measure import Spread, repeat
from pytest_gpufit.numbers import plural
from pytest_gpufit.serving.errors import EndpointError
from pytest_gpufit.suites.context import CheckFailed, Context
from pytest_gpufit.suites.limits import expect_throughput_limits
from pytest_gpufit.suites.serving_checks import held_first_token, one_token_ttft_ms
from pytest_gpufit.units import format_gb

Params = dict[str, Any]


BURST_RERUNS = 2  # times a throughput round that arrived in a burst runs again


def _system_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def run_fits(ctx: Context, params: Params) -> None:
    est = ctx.estimate()
    ctx.metrics.update(estimate_total_bytes=est.total_bytes, context=est.context)
    if ctx.gpu is None:
        memory, where = _system_memory(), "system memory"
    else:
        fit = fit_on(ctx.spec, est, ctx.gpu)
        # What CUDA can allocate, not NVML's total: the same rule as requires_fit and the tables.
        memory, where = fit.usable_bytes, ctx.gpu.label
        ctx.metrics.update(max_context=fit.max_context, precision_support=fit.precision_support)
    ctx.metrics["headroom_bytes"] = memory - est.total_bytes
    ctx.expect(
        est.total_bytes <= memory,
        f"does not fit: needs {format_gb(est.total_bytes)} ({est.dtype} at context "
        f"{est.context}, estimate); {where} has {format_gb(memory)}"
        + (" usable" if ctx.gpu is not None else ""),
    )


def run_loads(ctx: Context, params: Params) -> None:
    loaded = ctx.in_process_model().loaded()
    est = ctx.estimate()
    ctx.metrics.update(
        load_seconds=round(loaded.load_seconds, 3),
        estimate_weights_bytes=est.weights_bytes,
        estimate_total_bytes=est.total_bytes,
    )
    wrong = loaded.wrong_dtype_parameters
    ctx.expect(
        not wrong,
        f"{plural(len(wrong), 'parameter')} {'is' if len(wrong) == 1 else 'are'} not in "
        f"{ctx.target.dtype}: "
        f"{', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}",
    )
    if "max_seconds" in params:
        ctx.expect(
            loaded.load_seconds <= params["max_seconds"],
            f"load took {loaded.load_seconds:.2f} s > max_seconds {params['max_seconds']}",
        )
    peak = loaded.peak_allocated_bytes
    if peak is not None:
        ctx.metrics["peak_allocated_bytes"] = peak
    wants_memory = "max_peak_memory" in params or "within_estimate" in params
    if wants_memory and peak is None:
        raise CheckFailed(
            f"max_peak_memory and within_estimate need a CUDA device to measure; "
            f"this target runs on {ctx.target.device}"
        )
    if peak is not None and "max_peak_memory" in params:
        ctx.expect(
            peak <= params["max_peak_memory"],
            f"peak memory {format_gb(peak)} > max_peak_memory "
            f"{format_gb(params['max_peak_memory'])}",
        )
    if peak is not None and "within_estimate" in params:
        gap = (peak - est.weights_bytes) / est.weights_bytes
        ctx.metrics["peak_vs_estimate"] = round(gap, 4)
        ctx.expect(
            abs(gap) <= params["within_estimate"],
            f"peak memory after loading {format_gb(peak)} is {gap:+.1%} from the "
            f"estimated weights {format_gb(est.weights_bytes)} (within_estimate "
            f"{params['within_estimate']:.0%})",
        )


def _rate(count: float, seconds: float, what: str) -> float:
    """``count / seconds``, refusing a time no real run takes (zero, negative, NaN).

    >>> _rate(10, 0.5, "decode")
    20.0
    """
    if not (math.isfinite(seconds) and seconds > 0):
        raise CheckFailed(
            f"the backend timed {what} at {seconds!r} s; a real run takes a positive, finite "
            "time (a broken timer or backend)"
        )
    return count / seconds


def _p99(values: Sequence[float]) -> float:
    """The 99th percentile, interpolated linearly as numpy's default (and serving.load) do.

    >>> _p99([1.0]), round(_p99([1.0, 2.0, 3.0]), 2)
    (1.0, 2.98)
    """
    values = list(values)
    if len(values) < 2:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[98])


def short_run(out: Generated, asked: int) -> str:
    """Why ``out`` is not the exact count of ``asked`` tokens a check asked for, in words that
    say whose count it is and, from a server, what it said and how the count was asked.

    >>> short_run(Generated(3, 0.1, 0.2), 6)
    'the backend produced 3 tokens where 6 were asked'
    """
    stream = out.stream
    if stream is None:
        return f"the backend produced {out.count} tokens where {asked} were asked"
    if stream.completion_tokens is None:
        return (
            f"the server reported no usage.completion_tokens ({stream.content_chunks} chunks of "
            f"text arrived), so the {asked} tokens asked for cannot be confirmed "
            "(stream_options.include_usage unsupported?)"
        )
    return (
        f"the server produced {out.count} of the {asked} tokens asked for (finish_reason "
        f"{stream.finish_reason!r}): it ignores ignore_eos (asked with "
        f"{stream.exact_words}) or stops early; see README, 'A server that stops early'"
    )


def run_generates(ctx: Context, params: Params) -> None:
    gen = ctx.generator()
    prompt = gen.prompt(params.get("prompt"), params.get("prompt_tokens", 0))
    asked = params["max_new_tokens"]
    # Exactly max_new_tokens, as throughput asks: a server's count, finish reason and model
    # are held against what arrived (serving.client), and the count against what was asked.
    out = gen.generate(prompt, asked, ignore_eos=True)
    # One unrepeated run: reported, but not a baseline metric (throughput has the medians).
    ctx.metrics.update(new_tokens=out.count, single_run_ttft_ms=round(out.ttft_s * 1000, 2))
    if out.token_ids is not None:
        ctx.metrics["tokens"] = out.token_ids
    if out.stream is not None:
        ctx.metrics.update(text=out.stream.text, finish_reason=out.stream.finish_reason)
    if prompt.counted:
        ctx.metrics["prompt_tokens"] = prompt.tokens
    if out.count != asked or (out.stream is not None and out.stream.completion_tokens is None):
        ctx.failures.append(short_run(out, asked))
    if "expect_tokens" in params:
        want, new = params["expect_tokens"], out.token_ids or []
        ctx.expect(new[: len(want)] == want, f"tokens {new[: len(want)]} != expected {want}")
    if "expect_contains" in params:
        if out.stream is not None:
            text = out.stream.text
        else:
            decoded = gen.decode(out.token_ids or [])
            if decoded is None:
                raise CheckFailed("expect_contains needs a tokenizer in the model folder")
            text = ctx.metrics["text"] = decoded
        ctx.expect(
            params["expect_contains"] in text,
            f"output {text!r} does not contain {params['expect_contains']!r}",
        )


def run_throughput(ctx: Context, params: Params) -> None:
    """Prefill and decode rates and time to first token, medians of repeated runs of exactly
    ``new_tokens``. From a server: streamed TTFT, ITL and E2E as the client sees them; decode
    counts the server's own usage tokens."""
    gen = ctx.generator()
    batch, prompt_n, new_n = params["batch"], params["prompt_tokens"], params["new_tokens"]
    prompt = gen.prompt(None, prompt_n, batch)
    if params["prompts"] == "unique":  # each request its own: no prefill answered by a cache
        prompt = dataclasses.replace(prompt, unique=True)
    ctx.metrics["prompts"] = params["prompts"]
    again: list[str] = []

    def generate() -> Generated:
        # No figure comes from a burst. A server or client descheduled on a busy machine
        # delivers one now and then (measured: transformers serve on a loaded 2-core box, 1
        # round in ~8; a CPU vLLM beside another pytest worker, two in a row); a buffering
        # proxy does it every time: a round runs again at most twice, a third burst in a row
        # fails the check, and so do bursts in more than half the rounds (below).
        for _ in range(BURST_RERUNS):
            try:
                return gen.generate(prompt, new_n, ignore_eos=True)
            except EndpointError as error:
                if error.kind != "buffered":
                    raise
                again.append(str(error))
        return gen.generate(prompt, new_n, ignore_eos=True)

    def one_round() -> dict[str, float]:
        out = generate()
        if out.count != new_n:  # the rates are of new_n tokens: any other count is another run
            raise CheckFailed(
                short_run(out, new_n) + "; throughput is measured on exactly new_tokens"
            )
        figures = {"ttft_ms": out.ttft_s * 1000}
        if out.stream is not None:
            figures["e2e_ms"] = out.stream.e2e_s * 1000
        prompt_count = batch * (out.prompt_tokens or prompt.tokens or 0)
        decoded = batch * (out.count - 1)
        if gen.in_process:  # its own timer: a zero or NaN time is a broken backend
            figures["prefill_tok_s"] = _rate(prompt_count, out.ttft_s, "time to first token")
            figures["decode_tok_s"] = _rate(decoded, out.decode_s, "decode") if new_n > 1 else 0.0
        else:
            ttft, decode = out.ttft_s, out.decode_s
            figures["prefill_tok_s"] = prompt_count / ttft if ttft > 0 else 0.0
            figures["decode_tok_s"] = decoded / decode if out.count > 1 and decode > 0 else 0.0
        if out.stream is not None and out.stream.itl_s:
            figures["itl_ms_p99"] = _p99(out.stream.itl_s) * 1000
        return figures

    stats = repeat(one_round, params["warmup"], params["repeats"])
    if again:
        ctx.metrics["rounds_run_again"] = len(again)
        ctx.metrics["note"] = f"{len(again)} round(s) arrived in a burst and ran again: {again[0]}"
        rounds = params["warmup"] + params["repeats"]
        if 2 * len(again) > rounds:  # a round run again twice counts twice
            # Now and then is a busy machine; most rounds is a server or proxy that bursts
            # every other answer (never two in a row): the figures are of the few it paced.
            ctx.failures.append(
                f"{len(again)} of {rounds} rounds arrived in a burst and ran again, more than "
                f"half: the stream is delivered in bursts, not now and then ({again[0]})"
            )
    if not gen.in_process and new_n > 1 and "e2e_ms" in stats:
        _held_first_token(ctx, prompt, stats)
    for name, spread in stats.items():
        ctx.metrics[name] = round(spread.median, 2)
        ctx.metrics[f"{name}_spread"] = round(spread.relative_spread, 4)
    ctx.metrics["repeats"] = params["repeats"]
    if prompt.counted:
        ctx.metrics["prompt_tokens"] = prompt.tokens
    # Beside the card's bandwidth ceiling where the model runs here (a served target's
    # model may be unnamed: no ceiling yet).
    if gen.in_process and ctx.gpu is not None and ctx.gpu.memory_bandwidth_bytes_s:
        est = ctx.estimate(context=prompt_n + new_n, batch=batch)
        ceiling = fit_on(ctx.spec, est, ctx.gpu).decode_tok_s_ceiling
        if ceiling:
            ctx.metrics["decode_tok_s_ceiling"] = ceiling
            ctx.metrics["decode_pct_of_ceiling"] = round(
                100 * stats["decode_tok_s"].median / ceiling, 1
            )

    def how(metric: str) -> str:
        if gen.in_process:
            return f"median of {params['repeats']}, spread {stats[metric].relative_spread:.1%}"
        return f"median of {params['repeats']} streamed requests, as the client sees them"

    expect_throughput_limits(ctx, params, stats, how)


def _held_first_token(ctx: Context, prompt: Prompt, stats: dict[str, Spread]) -> None:
    """A served stream's first token against one-token answers (``held_first_token``)."""
    ttft, e2e = stats["ttft_ms"].median, stats["e2e_ms"].median
    held = held_first_token(ttft, one_token_ttft_ms(ctx.server(), str(prompt.payload)), e2e - ttft)
    if held is not None:
        ctx.failures.append(held)


def run_precision(ctx: Context, params: Params) -> None:
    if params["reference"] == "golden":
        run_golden(ctx, params)
        return
    model = ctx.in_process_model()
    loaded = model.loaded()
    free = loaded.free_bytes()
    need = estimate(ctx.spec, "fp32", params["prompt_tokens"]).weights_bytes
    if free is not None and need > free:
        raise CheckFailed(
            f"the fp32 reference needs {format_gb(need)} on {ctx.target.device} beside the "
            f"{ctx.target.dtype} model, and only {format_gb(free)} is free; use a smaller "
            "model for precision checks or reference: golden"
        )
    ids = model.prompt(None, params["prompt_tokens"]).payload
    reference = loaded.reference_fp32()
    try:
        kl, top1 = model.kl_and_top1(reference.logits(ids), loaded.logits(ids))
    finally:
        reference.unload()
    ctx.metrics.update(kl=round(kl, 8), top1_agreement=round(top1, 4))
    if "max_kl" in params:
        ctx.expect(kl <= params["max_kl"], f"KL divergence {kl:.4g} > max_kl {params['max_kl']:g}")
    if "min_top1_agreement" in params:
        ctx.expect(
            top1 >= params["min_top1_agreement"],
            f"top-1 agreement {top1:.3f} < min_top1_agreement {params['min_top1_agreement']:g}",
        )


def run_golden(ctx: Context, params: Params) -> None:
    """Greedy tokens and top-k log-probabilities, for the baseline to store and compare."""
    golden = ctx.golden_topk()
    prompt = golden.prompt(None, params["prompt_tokens"])
    ctx.metrics["golden"] = golden.greedy_topk(prompt, params["new_tokens"], params["top_k"])
    ctx.metrics["golden_max_logprob_diff"] = params["max_logprob_diff"]
