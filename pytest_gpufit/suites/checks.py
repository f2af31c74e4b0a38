"""What each check does. A check returns its measurements; a failed expectation raises
``CheckFailed`` with the measured figure in the message."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.estimate import MemoryEstimate, estimate, fit_on
from pytest_gpufit.fit.spec import ModelSpec, load_spec
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.measure import repeat
from pytest_gpufit.metrics import non_finite
from pytest_gpufit.numbers import plural
from pytest_gpufit.suites.limits import expect_throughput_limits
from pytest_gpufit.suites.runtime import ModelCache
from pytest_gpufit.suites.schema import Check, Target
from pytest_gpufit.units import format_gb


class CheckFailed(Exception):
    """An expectation of a suite check was not met; the message says by how much."""


@dataclass
class Context:
    """What a check may use: the target, its device (a GPU record, or None on the CPU)."""

    target: Target
    gpu: Gpu | None
    cache: ModelCache
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # A served target (backend: openai): its running server, started on first call.
    served: Callable[[], Any] | None = None
    progress: Callable[[str], None] | None = None  # one line on the terminal (load levels)

    @property
    def spec(self) -> ModelSpec:
        return load_spec(self.target.model_path)

    def estimate(self, context: int | None = None, batch: int = 1) -> MemoryEstimate:
        from pytest_gpufit.fit.context import check_context

        spec = self.spec
        asked = context or self.target.context
        # A verdict for a context the model (and vLLM) refuses would be an unearned green.
        check_context(spec, asked, "context")
        return estimate(spec, self.target.dtype, asked, batch)

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)


def _system_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def run_fits(ctx: Context, params: dict[str, Any]) -> None:
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


def run_loads(ctx: Context, params: dict[str, Any]) -> None:
    loaded = ctx.cache.get(ctx.target)
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


def _prompt(ctx: Context, loaded: Any, params: dict[str, Any], batch: int = 1) -> Any:
    # Through the backend, so a missing torch is a MissingExtra the policy judges, not a crash.
    return ctx.cache.backend(ctx.target).prompt_ids(
        loaded, params.get("prompt"), batch, params.get("prompt_tokens", 0), ctx.target.seed
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


def run_generates(ctx: Context, params: dict[str, Any]) -> None:
    loaded = ctx.cache.get(ctx.target)
    ids = _prompt(ctx, loaded, params)
    tokens, ttft, decode = loaded.generate(ids, params["max_new_tokens"])
    new = tokens[0].tolist()
    # One unrepeated run: reported, but not a baseline metric (throughput has the medians).
    ctx.metrics.update(new_tokens=len(new), single_run_ttft_ms=round(ttft * 1000, 2), tokens=new)
    ctx.expect(
        len(new) == params["max_new_tokens"],
        f"produced {plural(len(new), 'token')}, expected {params['max_new_tokens']}",
    )
    if "expect_tokens" in params:
        want = params["expect_tokens"]
        ctx.expect(new[: len(want)] == want, f"tokens {new[: len(want)]} != expected {want}")
    if "expect_contains" in params:
        if loaded.tokenizer is None:
            raise CheckFailed("expect_contains needs a tokenizer in the model folder")
        text = loaded.decode(new)
        ctx.metrics["text"] = text
        ctx.expect(
            params["expect_contains"] in text,
            f"output {text!r} does not contain {params['expect_contains']!r}",
        )


def run_throughput(ctx: Context, params: dict[str, Any]) -> None:
    loaded = ctx.cache.get(ctx.target)
    batch, prompt_n, new_n = params["batch"], params["prompt_tokens"], params["new_tokens"]
    ids = _prompt(ctx, loaded, params, batch)

    def one_round() -> dict[str, float]:
        tokens, ttft, decode = loaded.generate(ids, new_n)
        produced = len(tokens[0])
        if produced != new_n:  # the rates below count new_n tokens: fewer would inflate them
            raise CheckFailed(
                f"the backend produced {produced} tokens where {new_n} were asked; "
                "throughput is measured on exactly new_tokens (no early stop)"
            )
        return {
            "ttft_ms": ttft * 1000,
            "prefill_tok_s": _rate(batch * prompt_n, ttft, "time to first token"),
            "decode_tok_s": _rate(batch * (new_n - 1), decode, "decode") if new_n > 1 else 0.0,
        }

    stats = repeat(one_round, params["warmup"], params["repeats"])
    for name, spread in stats.items():
        ctx.metrics[name] = round(spread.median, 2)
        ctx.metrics[f"{name}_spread"] = round(spread.relative_spread, 4)
    ctx.metrics["repeats"] = params["repeats"]
    if ctx.gpu is not None and ctx.gpu.memory_bandwidth_bytes_s:
        est = ctx.estimate(context=prompt_n + new_n, batch=batch)
        ceiling = fit_on(ctx.spec, est, ctx.gpu).decode_tok_s_ceiling
        if ceiling:
            ctx.metrics["decode_tok_s_ceiling"] = ceiling
            ctx.metrics["decode_pct_of_ceiling"] = round(
                100 * stats["decode_tok_s"].median / ceiling, 1
            )
    expect_throughput_limits(
        ctx,
        params,
        stats,
        lambda m: f"median of {params['repeats']}, spread {stats[m].relative_spread:.1%}",
    )


def run_precision(ctx: Context, params: dict[str, Any]) -> None:
    if params["reference"] == "golden":
        run_golden(ctx, params)
        return
    loaded = ctx.cache.get(ctx.target)
    kl_and_top1 = ctx.cache.backend(ctx.target).kl_and_top1
    free = loaded.free_bytes()
    need = estimate(ctx.spec, "fp32", params["prompt_tokens"]).weights_bytes
    if free is not None and need > free:
        raise CheckFailed(
            f"the fp32 reference needs {format_gb(need)} on {ctx.target.device} beside the "
            f"{ctx.target.dtype} model, and only {format_gb(free)} is free; use a smaller "
            "model for precision checks or reference: golden"
        )
    ids = _prompt(ctx, loaded, params)
    reference = loaded.reference_fp32()
    try:
        kl, top1 = kl_and_top1(reference.logits(ids), loaded.logits(ids))
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


def run_golden(ctx: Context, params: dict[str, Any]) -> None:
    """Greedy tokens and top-k log-probabilities, for the baseline to store and compare."""
    loaded = ctx.cache.get(ctx.target)
    ids = _prompt(ctx, loaded, params)
    ctx.metrics["golden"] = loaded.greedy_topk(ids, params["new_tokens"], params["top_k"])
    ctx.metrics["golden_max_logprob_diff"] = params["max_logprob_diff"]


RUNNERS = {
    "fits": run_fits,
    "loads": run_loads,
    "generates": run_generates,
    "throughput": run_throughput,
    "precision": run_precision,
}


def _run_served(ctx: Context, check: Check) -> None:
    """A check of a served target, through the openai backend's handle (no HTTP here)."""
    from pytest_gpufit.suites.serving_checks import run_served_check

    if ctx.served is None:
        raise GpufitError(f"target {ctx.target.name}: no server to ask (an internal error)")
    run_served_check(ctx, ctx.served(), check.kind, check.params, ctx.progress)


def run_check(ctx: Context, check: Check) -> dict[str, Any]:
    """Run one check; raise CheckFailed listing every unmet expectation."""
    try:
        if ctx.target.backend == "openai" and check.kind != "fits":
            _run_served(ctx, check)
        else:
            RUNNERS[check.kind](ctx, check.params)
    except GpufitError as error:
        raise CheckFailed(str(error)) from None
    bad = non_finite(ctx.metrics)
    if bad:  # NaN compares false both ways: it must never reach a threshold or a baseline
        ctx.failures.insert(
            0,
            f"measured {', '.join(bad)}: a measurement must be a finite number "
            "(the device, the backend or the model produced garbage)",
        )
    if ctx.failures:
        raise CheckFailed("; ".join(ctx.failures))
    return ctx.metrics
