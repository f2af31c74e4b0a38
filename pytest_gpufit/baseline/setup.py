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

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

SAVE_AGAIN = "run the suite with --gpufit-baseline=save (accepted when every check passes)"


class SetupLaunch(Protocol):
    """The ``launch:`` fields a setup reads (a suite ``Launch`` has them)."""

    @property
    def command(self) -> tuple[str, ...]: ...
    @property
    def env(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def cwd(self) -> Path | None: ...


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
    @property
    def seed(self) -> int: ...
    @property
    def trust_remote_code(self) -> bool: ...
    @property
    def launch(self) -> SetupLaunch | None: ...


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


# Launch variables whose values are credentials: the store (committed, uploaded) keeps a digest.
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)


# Keys a config.json gains or loses by being saved again, not by being another model.
_RESAVED_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype"})


def model_config(model: Path | None) -> str | None:
    """A digest of the model's ``config.json`` (its architecture and sizes), so that another
    model in a folder of the same name (``/a/tiny`` and ``/b/tiny``, a ``current`` link moved
    to another model) is another target; None when there is no config to read. Keys that a
    re-save changes (``transformers_version``, ``torch_dtype``) are left out.

    >>> import json, tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    >>> model_config(folder)
    'sha256:1c4885415157'
    >>> _ = (folder / "config.json").write_text(
    ...     json.dumps({"num_hidden_layers": 2, "transformers_version": "4.57.0"}))
    >>> model_config(folder), model_config(None), model_config(folder / "nothing")
    ('sha256:1c4885415157', None, None)
    """
    if model is None:
        return None
    path = model / "config.json" if model.is_dir() else model
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    kept = {key: value for key, value in config.items() if key not in _RESAVED_KEYS}
    return _digest(json.dumps(kept, sort_keys=True, default=str))


def launch_setup(launch: SetupLaunch) -> dict[str, Any]:
    """What a launched server was started with: its command (the suite's folder written
    ``{suite_dir}``, so that checkouts in other places compare alike) and environment. The
    command names the model, its flags the engine's setup (``--max-num-seqs``, quantization,
    prefix caching): another command is another measurement. ``ready_timeout_s`` and
    ``log_forbid`` only judge, and are left out.

    >>> from types import SimpleNamespace as L
    >>> setup = launch_setup(L(command=("vllm", "serve", "/r/s/m", "--port", "{port}"),
    ...                        env=(("HF_TOKEN", "hf_x"), ("VLLM_USE_V1", "1")), cwd=Path("/r/s")))
    >>> setup["command"], setup["env"]
    (['vllm', 'serve', '{suite_dir}/m', '--port', '{port}'], \
{'HF_TOKEN': 'sha256:f5618cd8b98c', 'VLLM_USE_V1': '1'})
    """
    folder = str(launch.cwd) if launch.cwd is not None else None
    command = [arg.replace(folder, "{suite_dir}") if folder else arg for arg in launch.command]
    env = {
        name: _digest(value) if _SECRET_NAME.search(name) else value for name, value in launch.env
    }
    return {"command": command, "env": env}


def _digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def check_setup(
    kind: str,
    params: Mapping[str, Any],
    target: SetupTarget,
    judging_only: Iterable[str] = (),
    gpus: int | None = None,
    served_model: Any = None,
) -> dict[str, Any]:
    """The setup of one check, as stored: plain JSON values (tuples as lists).

    ``judging_only`` names the parameters that only judge the figures (the check kind's
    registry entry says which), stored with the setup so a later run knows what to ignore;
    ``gpus`` is how many GPUs the check was judged on (an all-reduce over 2 is not one over 4).

    ``served_model`` is the model a server listed and the client asked for (the check's
    ``metrics["served_model"]``): with no ``served_model:`` in the suite it is the only model
    the server lists, so a server redeployed with another model behind the same URL is
    another target.

    The target's identity: model (its folder's name and a digest of its config), weights,
    dtype, backend, device kind, endpoint and served model; the ``seed`` (random weights and
    prompt tokens) and ``trust_remote_code`` (whose modelling code runs); and for a launched
    server its command and environment.
    """
    identity: dict[str, Any] = {
        "model": model_name(target.model),
        "model_config": model_config(target.model),
        "weights": target.weights,
        "dtype": target.dtype,
        "backend": target.backend,
        "device": target.device.partition(":")[0],  # cuda:1 and cuda: one kind
        "endpoint": target.endpoint,
        "served_model": served_model if isinstance(served_model, str) else target.served_model,
        "seed": target.seed,
        "trust_remote_code": target.trust_remote_code,
        "gpus": gpus,
    }
    if target.launch is not None:
        identity["launch"] = launch_setup(target.launch)
    stored: dict[str, Any] = json.loads(
        json.dumps(
            {
                "check": kind,
                "params": dict(params),
                "judging": sorted(judging_only),
                "target": identity,
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
    >>> cold = {**a, "params": {"warmup": 0, "repeats": 1}}
    >>> setup_changes(cold, {**a, "params": {"warmup": 0, "repeats": 5}})
    ['repeats: 1 -> 5']
    """
    if not isinstance(old, Mapping):
        return None
    ignored = frozenset(new.get("judging") or ())  # this run's kind says what only judges
    if _cold_first_run(old.get("params"), new.get("params")):
        # Without warm-up runs the first timed run is the cold one (kernel autotuning, lazy
        # loading, a server's first request): how many warm runs join it moves the median.
        ignored = ignored - {"repeats"}
    out = []
    if old.get("check") != new.get("check"):
        out.append(f"check: {_shown(old.get('check'))} -> {_shown(new.get('check'))}")
    for part, skip in (("target", frozenset()), ("params", ignored)):
        before, after = _flat(old.get(part), part), _flat(new.get(part), part)
        for key in sorted(set(before) | set(after)):
            if key.split(".")[0] not in skip and before.get(key) != after.get(key):
                out.append(f"{key}: {_shown(before.get(key))} -> {_shown(after.get(key))}")
    return out


def _cold_first_run(*params: Any) -> bool:
    """Whether either setup timed its runs with no warm-up run before them.

    >>> _cold_first_run({"warmup": 0, "repeats": 1}, {"warmup": 0}), _cold_first_run({}, None)
    (True, False)
    """
    return any(isinstance(p, Mapping) and p.get("warmup") == 0 for p in params)


def _flat(value: Any, part: str) -> dict[str, Any]:
    """A setup part as ``{dotted.key: value}``: a launch's ``command`` and each ``env``
    variable are named apart in a message. A part that is not a mapping (a record edited by
    hand) is one value named by the part, so it never compares as equal to a real one.

    >>> _flat({"launch": {"command": ["a"], "env": {"X": "1"}}, "seed": 0}, "target")
    {'launch.command': ['a'], 'launch.env.X': '1', 'seed': 0}
    >>> _flat(None, "params"), _flat([1], "params")
    ({}, {'params': [1]})
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return {part: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            out.update({f"{key}.{name}": v for name, v in _flat(item, str(key)).items()})
        else:
            out[str(key)] = item
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
