"""Golden numerics: a stored greedy sequence with its top-k log-probabilities."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pytest_gpufit.errors import GpufitError


def check_golden(record: Any, where: str) -> None:
    """Refuse a golden record that could pass any output: empty, ragged or not finite."""
    if not isinstance(record, Mapping):
        raise GpufitError(f"{where}: golden is {type(record).__name__}, expected a mapping")
    tokens, ids, logprobs = (record.get(k) for k in ("tokens", "top_ids", "top_logprobs"))
    if not isinstance(tokens, list) or not tokens:
        raise GpufitError(f"{where}: golden tokens are empty or missing; it would pass any output")
    if not isinstance(ids, list) or not isinstance(logprobs, list):
        raise GpufitError(f"{where}: golden top_ids and top_logprobs must be lists")
    if not len(tokens) == len(ids) == len(logprobs):
        raise GpufitError(
            f"{where}: golden has {len(tokens)} tokens but {len(ids)} top_ids and "
            f"{len(logprobs)} top_logprobs lists"
        )
    for step, (token, top, probs) in enumerate(zip(tokens, ids, logprobs, strict=True)):
        if not isinstance(top, list) or not isinstance(probs, list) or len(top) != len(probs):
            raise GpufitError(f"{where}: golden step {step}: top_ids and top_logprobs differ")
        if not top or token not in top:
            raise GpufitError(f"{where}: golden step {step}: token {token!r} not in its top list")
        if not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p)
            for p in probs
        ):
            raise GpufitError(f"{where}: golden step {step}: log-probabilities must be finite")


def compare_golden(
    old: Mapping[str, Any], new: Mapping[str, Any], max_logprob_diff: float
) -> str | None:
    """None when ``new`` matches the stored greedy sequence, else why not.

    Tokens must be identical up to the first divergence; there, each side's token must be in
    the other's top-k and their log-probabilities within ``max_logprob_diff``; after it the
    sequences are no longer comparable (the check vLLM uses across kernels). Both records are
    checked first: an empty or ragged one is an error, not a match.
    """
    check_golden(old, "baseline")
    check_golden(new, "measured")
    if len(new["tokens"]) < len(old["tokens"]):
        return f"{len(new['tokens'])} tokens generated, the baseline holds {len(old['tokens'])}"
    for step, (a, b) in enumerate(zip(old["tokens"], new["tokens"], strict=False)):
        old_top = dict(zip(old["top_ids"][step], old["top_logprobs"][step], strict=True))
        new_top = dict(zip(new["top_ids"][step], new["top_logprobs"][step], strict=True))
        if a == b:
            diff = abs(old_top[a] - new_top[b])
            if diff > max_logprob_diff:
                return (
                    f"step {step}: token {a} log-probability {old_top[a]:.4f} -> "
                    f"{new_top[b]:.4f} (|diff| {diff:.4f} > {max_logprob_diff})"
                )
            continue
        if a not in new_top or b not in old_top:
            return (
                f"step {step}: greedy token {a} -> {b}, and they are not in each other's "
                f"top-{len(old_top)}"
            )
        diff = abs(old_top[a] - new_top[a])
        if diff > max_logprob_diff:
            return (
                f"step {step}: tokens diverge ({a} -> {b}) and token {a}'s log-probability "
                f"moved by {diff:.4f} > {max_logprob_diff}"
            )
        return None  # a close call between near-equal tokens: the sequences part here
    return None
