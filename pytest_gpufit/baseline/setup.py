"""What a check's figures were measured with, kept beside them in each baseline record.

A baseline figure is comparable only with a figure measured the same way: decode tok/s over 4
new tokens is not decode tok/s over 64 (a 2x slower server once read "10.95 -> 32.51, better
than baseline" after ``new_tokens`` was edited under the same node id). Each stored result
keeps its ``setup``: the check's kind and parameters, and the target's identity (model, weights,
dtype, backend, device kind, endpoint, served model). A change of any of them, except the
parameters that only judge the figures, makes the baseline incomparable: the check fails,
naming what changed and how to record a new baseline.

Records saved before setups were kept have none: under ``missing: fail`` (the default) that
fails like a check the baseline lacks, asking for a new baseline; under ``missing: warn`` the
figures are compared, with a warning.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

SAVE_AGAIN = "run the suite with --gpufit-baseline=save (accepted when every check passes)"


class SetupTarget(Protocol):
    """The target fields a setup reads (a suite ``Target`` has them)."""

    @property
    def model(self) -> Path | None: ...
    @property
    def weights(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def endpoint(self) -> str | None: ...
    @property
    def served_model(self) -> str | None: ...


def model_name(model: Path | None) -> str | None:
    """A model's identity that holds on every checkout: its folder's name, a config file's
    folder, or a shipped config's name.

    >>> model_name(Path("/m/Qwen3-30B-A3B")), model_name(Path("/x/tiny/config.json"))
    ('Qwen3-30B-A3B', 'tiny')
    >>> model_name(Path("/pkg/models/Qwen__Qwen3-0.6B.json")), model_name(None)
    ('Qwen__Qwen3-0.6B', None)
    """
    if model is None:
        return None
    if model.name == "config.json":
        return model.parent.name
    return model.stem if model.suffix == ".json" else model.name


def check_setup(
    kind: str,
    params: Mapping[str, Any],
    target: SetupTarget,
    judging_only: Iterable[str] = (),
    gpus: int | None = None,
) -> dict[str, Any]:
    """The setup of one check, as stored: plain JSON values (tuples as lists).

    ``judging_only`` names the parameters that only judge the figures (the check kind's
    registry entry says which), stored with the setup so a later run knows what to ignore;
    ``gpus`` is how many GPUs the check was judged on (an all-reduce over 2 is not one over 4).
    """
    stored: dict[str, Any] = json.loads(
        json.dumps(
            {
                "check": kind,
                "params": dict(params),
                "judging": sorted(judging_only),
                "target": {
                    "model": model_name(target.model),
                    "weights": target.weights,
                    "dtype": target.dtype,
                    "backend": target.backend,
                    "device": target.device.partition(":")[0],  # cuda:1 and cuda: one kind
                    "endpoint": target.endpoint,
                    "served_model": target.served_model,
                    "gpus": gpus,
                },
            },
            sort_keys=True,
            default=str,
        )
    )
    return stored


def _shown(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value, sort_keys=True)


def setup_changes(old: Any, new: Mapping[str, Any]) -> list[str] | None:
    """What differs between a baseline's setup and this run's (``name: old -> new``); None when
    the baseline recorded none.

    >>> a = {"check": "throughput", "params": {"new_tokens": 64, "repeats": 5}, "target": {},
    ...      "judging": ["repeats"]}
    >>> setup_changes(a, {**a, "params": {"new_tokens": 4, "repeats": 9}})
    ['new_tokens: 64 -> 4']
    >>> setup_changes(None, a) is None, setup_changes(a, a)
    (True, [])
    """
    if not isinstance(old, Mapping):
        return None
    ignored = frozenset(new.get("judging") or ())  # this run's kind says what only judges
    out = []
    if old.get("check") != new.get("check"):
        out.append(f"check: {_shown(old.get('check'))} -> {_shown(new.get('check'))}")
    for part, skip in (("target", frozenset()), ("params", ignored)):
        before, after = old.get(part) or {}, new.get(part) or {}
        for key in sorted(set(before) | set(after)):
            if key not in skip and before.get(key) != after.get(key):
                out.append(f"{key}: {_shown(before.get(key))} -> {_shown(after.get(key))}")
    return out


def judge_setup(
    old_entry: Mapping[str, Any], setup: Mapping[str, Any], run_id: str, nodeid: str, missing: str
) -> tuple[str | None, str | None]:
    """(failure, warning) of comparing this check's figures with a baseline entry's, by setup.

    A changed setup fails; a baseline entry with no setup fails under ``missing: fail`` and
    warns (figures compared) under ``missing: warn``.
    """
    changes = setup_changes(old_entry.get("setup"), setup)
    if changes is None:
        message = (
            f"{nodeid}: baseline run {run_id} was saved before gpufit kept each check's "
            "parameters and target beside its figures, so nothing says they were measured "
            f"alike; record a new baseline ({SAVE_AGAIN})"
        )
        if missing == "warn":
            return None, message + " (compared anyway: baseline: {missing: warn})"
        return message + ", or set baseline: {missing: warn} to compare it with a warning", None
    if changes:
        return (
            f"{nodeid} was measured with other parameters in baseline run {run_id} "
            f"({', '.join(changes)}): figures measured differently cannot be compared; if the "
            f"change is meant, record a new baseline: {SAVE_AGAIN}",
            None,
        )
    return None, None
