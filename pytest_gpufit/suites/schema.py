"""The suite file contract: parse and validate into frozen records, with errors that name the
file, the line, the field and what is expected."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pytest_gpufit.baseline import BaselinePolicy, parse_confirm, parse_missing, parse_tolerances
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.spec import resolve_model
from pytest_gpufit.markers import YAML_KEYS, check_fit_models, requirement_from_yaml
from pytest_gpufit.requirements import Requirement
from pytest_gpufit.suites.yaml_lines import Located, load_yaml
from pytest_gpufit.units import (
    parse_percent,
    parse_size,
    percent_json_schema,
    shown,
    size_json_schema,
)

CHECK_ORDER = ("fits", "serves", "loads", "generates", "throughput", "load", "precision")
BACKENDS = ("transformers", "openai")
DTYPES = ("fp32", "bf16", "fp16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass(frozen=True)
class Check:
    kind: str
    params: dict[str, Any]
    line: int
    field_lines: Mapping[str, int] = field(default_factory=dict)  # YAML line of each key


@dataclass(frozen=True)
class Launch:
    """``launch:`` of an openai target: the server gpufit starts, waits for and stops."""

    command: tuple[str, ...]
    ready_timeout_s: float = 900.0
    env: tuple[tuple[str, str], ...] = ()
    log_forbid: tuple[str, ...] = ()
    line: int = 0
    cwd: Path | None = None  # the suite's folder: relative paths in the command start here


@dataclass(frozen=True)
class Target:
    name: str
    model: Path | None  # None: an openai target without a model folder (no fit estimate)
    weights: str
    backend: str
    dtype: str
    device: str
    context: int | None
    requirement: Requirement | None
    checks: tuple[Check, ...]
    trust_remote_code: bool
    seed: int
    line: int
    has_tokenizer: bool
    baseline: BaselinePolicy = BaselinePolicy()
    endpoint: str | None = None  # openai: the API base URL, ``{port}`` for a launched server
    served_model: str | None = None  # openai: None means the only model /v1/models lists
    api_key_env: str | None = None  # openai: the NAME of the variable holding the key
    launch: Launch | None = None

    @property
    def model_path(self) -> Path:
        """The model folder; only called where the schema made sure there is one."""
        if self.model is None:
            raise GpufitError(f"target {self.name} names no model (give model: for a fit estimate)")
        return self.model


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    requirement: Requirement | None
    targets: tuple[Target, ...] = field(default=())


class _Where:
    """Builds 'file:line: field: message' errors."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, line: int, where: str, message: str) -> GpufitError:
        return GpufitError(f"{self.path}:{line}: {where}: {message}")


# ---- field kinds ---------------------------------------------------------------------------
# Each kind parses one YAML value and carries the JSON Schema of what it accepts, so
# ``schema.json`` is generated from these tables (pytest_gpufit/suites/json_schema.py).

Kind = Callable[[Any], Any]
KIND_SCHEMAS: dict[Kind, dict[str, Any]] = {}

NUMBER_LIMIT = 1e100  # thresholds are finite and below this
MAX_REPEATS = 1000  # throughput repeats and warmup runs
MAX_TOKENS = 10_000_000  # prompt, new tokens, context
MAX_BATCH = 100_000
MAX_SEED = 2**32 - 1


_K = TypeVar("_K", bound=Kind)


def _kind(schema: dict[str, Any]) -> Callable[[_K], _K]:
    def register(kind: _K) -> _K:
        KIND_SCHEMAS[kind] = schema
        return kind

    return register


def _whole(value: Any) -> Any:
    """JSON (and JSON Schema's ``integer``) counts 5.0 as the whole number 5."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _int_kind(minimum: int, maximum: int, meaning: str = "") -> Kind:
    """Whole numbers from ``minimum`` to ``maximum`` (a cap that catches typos such as 10^12)."""

    def parse(value: Any) -> int:
        value = _whole(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise GpufitError(
                f"expected a whole number from {minimum} to {maximum:,}{meaning}, got {value!r}"
            )
        if value > maximum:
            raise GpufitError(f"expected at most {maximum:,}{meaning}, got {shown(value)}")
        return value

    schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    return _kind(schema)(parse)


_positive_int = _int_kind(1, MAX_TOKENS)
_count = _int_kind(0, MAX_SEED)
_repeats = _int_kind(1, MAX_REPEATS, " runs")
_warmup = _int_kind(0, MAX_REPEATS, " runs")
_batch = _int_kind(1, MAX_BATCH)

# YAML 1.1 reads ``1e9`` as text: accept text that is a positive number below NUMBER_LIMIT
# (a plain decimal of up to 100 digits, or d.ddde[+-]NN), ASCII digits only.
_POSITIVE_TEXT = (
    r"^ *(0*[1-9][0-9]{0,99}(\.[0-9]*)?|0*\.0*[1-9][0-9]*"
    r"|([1-9](\.[0-9]*)?|0?\.0*[1-9][0-9]*)[eE][+-]?[0-9]{1,2}) *$"
)
_POSITIVE_NUMBER_SCHEMA = {
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": NUMBER_LIMIT},
        {"type": "string", "pattern": _POSITIVE_TEXT},
    ]
}


def _finite(value: Any) -> float:
    """A real number (not a bool), finite and below NUMBER_LIMIT in size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GpufitError(f"expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise GpufitError(f"expected a finite number, got {value!r}")
    if abs(value) >= NUMBER_LIMIT:  # before float(): a 400-digit int overflows it
        raise GpufitError(f"expected a number below 1e100, got {shown(value)}")
    return float(value)


@_kind(_POSITIVE_NUMBER_SCHEMA)
def _positive_number(value: Any) -> float:
    if isinstance(value, str):
        if not re.match(_POSITIVE_TEXT, value):
            raise GpufitError(f"expected a number > 0, got {value!r}")
        return float(value)
    number = _finite(value)
    if number <= 0:
        raise GpufitError(f"expected a number > 0, got {value!r}")
    return number


@_kind({"type": "number", "minimum": 0, "maximum": 1})
def _fraction(value: Any) -> float:
    number = _finite(value) if not isinstance(value, str) else -1.0
    if not 0 <= number <= 1:
        raise GpufitError(f"expected a number from 0 to 1, got {value!r}")
    return number


@_kind({"type": "string", "minLength": 1})
def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise GpufitError(f"expected text, got {value!r}")
    return value


@_kind({"type": "boolean"})
def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise GpufitError(f"expected true or false, got {value!r}")
    return value


@_kind({"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1})
def _token_list(value: Any) -> list[int]:
    value = [_whole(v) for v in value] if isinstance(value, list) else value
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise GpufitError(f"expected a list of token ids, got {value!r}")
    return list(value)


_SECONDS_TEXT = _POSITIVE_TEXT.replace(") *$", ") *s? *$")


@_kind(
    {
        "oneOf": [
            _POSITIVE_NUMBER_SCHEMA["oneOf"][0],
            {"type": "string", "pattern": _SECONDS_TEXT},
        ],
        "description": "seconds: a number, or text such as '90s'",
    }
)
def _seconds(value: Any) -> float:
    if isinstance(value, str):
        if not re.match(_SECONDS_TEXT, value):
            raise GpufitError(f"expected seconds such as 90 or '90s', got {value!r}")
        return float(value.strip().removesuffix("s"))
    return _positive_number(value)


@_kind(size_json_schema())
def _size(value: Any) -> int:
    return parse_size(value, "size")


@_kind(percent_json_schema())
def _percent(value: Any) -> float:
    return parse_percent(value, "percentage")


def _choice(options: tuple[str, ...]) -> Kind:
    def parse(value: Any) -> str:
        if value not in options:
            raise GpufitError(f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return _kind({"enum": list(options)})(parse)


_reference = _choice(("fp32", "golden"))  # golden: the baseline's stored tokens
# ASCII digits: 'cuda:²' is no device. remote: a server gpufit does not start (its hardware
# is the server's, not this machine's), the default of an openai target without launch:.
_DEVICE = r"^(cpu|cuda|cuda:[0-9]{1,4}|remote)$"
REMOTE = "remote"


@_kind({"type": "string", "pattern": _DEVICE})
def _device(value: Any) -> str:
    if not isinstance(value, str) or not re.match(_DEVICE, value):
        raise GpufitError(
            f"expected cuda, cuda:N or cpu, got {value!r} (or remote: a served model that "
            "gpufit does not launch)"
        )
    return value


MAX_CONCURRENCY = 100_000


@_kind(
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY},
        "minItems": 1,
    }
)
def _levels(value: Any) -> list[int]:
    """Concurrency levels: whole numbers from 1, in the order given."""
    items = [_whole(v) for v in value] if isinstance(value, list) else value
    if (
        not isinstance(items, list)
        or not items
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_CONCURRENCY
            for v in items
        )
    ):
        raise GpufitError(f"expected a list of concurrencies such as [1, 8, 32], got {value!r}")
    return list(items)


@_kind({"type": "array", "items": _POSITIVE_NUMBER_SCHEMA, "minItems": 1})
def _rates(value: Any) -> list[float]:
    """Request rates in requests/s (Poisson arrivals)."""
    if not isinstance(value, list) or not value:
        raise GpufitError(f"expected a list of request rates such as [2, 5], got {value!r}")
    return [_positive_number(v) for v in value]


SLO_METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_STATS = ("p50", "p90", "p99")
SLO_KEYS = tuple(f"{m}_ms_{q}" for m in SLO_METRICS for q in SLO_STATS)


@_kind(
    {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {key: _POSITIVE_NUMBER_SCHEMA for key in SLO_KEYS},
        "description": "per level: a percentile in ms must stay at or below its value",
    }
)
def _slo(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise GpufitError(f"expected a mapping such as {{ttft_ms_p99: 2000}}, got {value!r}")
    out = {}
    for key, bound in value.items():
        if key not in SLO_KEYS:
            hint = difflib.get_close_matches(str(key), SLO_KEYS, n=1)
            did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
            raise GpufitError(
                f"unknown SLO {key!r}; {did_you_mean}(accepted: {', '.join(SLO_KEYS)})"
            )
        try:
            out[str(key)] = _positive_number(bound)
        except GpufitError as error:
            raise GpufitError(f"{key}: {error}") from None
    return out


_URL = r"^https?://[^\s/]+(/[^\s]*)?$"


@_kind({"type": "string", "pattern": _URL})
def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(_URL, value):
        raise GpufitError(
            f"expected an http(s) URL such as http://127.0.0.1:{{port}}/v1, got {value!r}"
        )
    return value


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


@_kind({"type": "string", "pattern": _ENV_NAME})
def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.match(_ENV_NAME, value):
        raise GpufitError(
            f"expected the NAME of an environment variable (such as OPENAI_API_KEY), got {value!r}"
        )
    return value


CHECK_FIELDS: dict[str, dict[str, Kind]] = {
    "fits": {},
    "serves": {},
    "loads": {"max_seconds": _seconds, "max_peak_memory": _size, "within_estimate": _percent},
    "generates": {
        "prompt": _text,
        "prompt_tokens": _positive_int,
        "max_new_tokens": _positive_int,
        "expect_contains": _text,
        "expect_tokens": _token_list,
    },
    "throughput": {
        "prompt_tokens": _positive_int,
        "new_tokens": _positive_int,
        "batch": _batch,
        "warmup": _warmup,
        "repeats": _repeats,
        "min_decode_tok_s": _positive_number,
        "min_prefill_tok_s": _positive_number,
        "max_ttft_ms": _positive_number,
    },
    "load": {
        "concurrency": _levels,
        "rate": _rates,
        "requests": _positive_int,
        "prompt_tokens": _positive_int,
        "new_tokens": _positive_int,
        "max_seconds": _seconds,
        "timeout_s": _seconds,
        "slo": _slo,
        "min_goodput": _percent,
        "max_error_rate": _percent,
    },
    "precision": {
        "reference": _reference,
        "prompt_tokens": _positive_int,
        "max_kl": _positive_number,
        "min_top1_agreement": _fraction,
        "new_tokens": _positive_int,
        "top_k": _positive_int,
        "max_logprob_diff": _positive_number,
    },
}
CHECK_DEFAULTS: dict[str, dict[str, Any]] = {
    "generates": {"max_new_tokens": 16},
    "throughput": {"prompt_tokens": 128, "new_tokens": 64, "batch": 1, "warmup": 1, "repeats": 5},
    "load": {
        "requests": 16,
        "prompt_tokens": 128,
        "new_tokens": 64,
        "max_seconds": 300.0,
        "timeout_s": 120.0,
    },
    "precision": {
        "reference": "fp32",
        "prompt_tokens": 64,
        "new_tokens": 16,
        "top_k": 5,
        "max_logprob_diff": 0.1,
    },
}
REQUIRES_FIELDS = tuple(YAML_KEYS)  # from the marker table (pytest_gpufit.markers.SPECS)
# Scalar target fields and their kinds; requires, checks and baseline are mappings of their own.
TARGET_KINDS: dict[str, Kind] = {
    "name": _text,
    "model": _text,
    "weights": _choice(("checkpoint", "random")),
    "backend": _choice(BACKENDS),
    "endpoint": _url,
    "served_model": _text,
    "api_key_env": _env_name,
    "dtype": _choice(DTYPES),
    "device": _device,
    "context": _positive_int,
    "trust_remote_code": _bool,
    "seed": _count,
}
TARGET_DEFAULTS: dict[str, Any] = {
    "weights": "checkpoint",
    "backend": "transformers",
    "dtype": "bf16",
    "device": "cuda",
    "context": None,
    "trust_remote_code": False,
    "seed": 0,
}
TARGET_FIELDS = (*TARGET_KINDS, "requires", "checks", "baseline", "launch")
TARGET_REQUIRED = ("name", "checks")  # and model, for the transformers backend
OPENAI_ONLY = ("endpoint", "served_model", "api_key_env", "launch")
LAUNCH_FIELDS = ("command", "ready_timeout_s", "env", "log_forbid")
DEFAULT_ENDPOINT = "http://127.0.0.1:{port}/v1"
SUITE_FIELDS = ("suite", "requires", "targets", "baseline")
BASELINE_FIELDS = ("tolerance", "missing", "confirm")


def _unknown(
    keys: Mapping[str, Any],
    allowed: tuple[str, ...] | list[str],
    node: Located,
    where: str,
    at: _Where,
) -> None:
    for key in keys:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            raise at.error(
                node.key_lines.get(key, node.line),
                f"{where}{key}",
                f"unknown key{did_you_mean} (accepted: {', '.join(allowed)})",
            )


def _mapping(value: Any, line: int, where: str, at: _Where) -> Located:
    if not isinstance(value, Located):
        raise at.error(line, where, f"expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _requires(node: Any, line: int, where: str, at: _Where) -> Requirement | None:
    if node is None:
        return None
    node = _mapping(node, line, where, at)
    _unknown(node, REQUIRES_FIELDS, node, f"{where}.", at)
    req: Requirement | None = None
    for key, value in node.items():
        try:
            part = requirement_from_yaml(key, value)
            check_fit_models(part, at.path.parent)  # the model, its context and TP split
        except GpufitError as error:
            raise at.error(node.key_lines[key], f"{where}.{key}", str(error)) from None
        req = part if req is None else req.merge(part)
    return req


def _baseline(
    node: Any, line: int, where: str, at: _Where, inherited: BaselinePolicy | None = None
) -> BaselinePolicy:
    """``baseline: {tolerance: {metric: 5%}, missing: fail|warn, confirm: N}``; a target's keys
    refine its suite's."""
    base = inherited or BaselinePolicy()
    if node is None:
        return base
    node = _mapping(node, line, where, at)
    _unknown(node, BASELINE_FIELDS, node, f"{where}.", at)
    parsers = {"tolerance": parse_tolerances, "missing": parse_missing, "confirm": parse_confirm}
    values: dict[str, Any] = {}
    for key, parse in parsers.items():
        if key in node:
            try:
                values[key] = parse(node[key], f"{where}.{key}")
            except GpufitError as error:
                raise at.error(node.key_lines[key], f"{where}.{key}", str(error)) from None
    return BaselinePolicy(
        tolerances={**base.tolerances, **values.get("tolerance", {})},
        missing=values.get("missing", base.missing),
        confirm=values.get("confirm", base.confirm),
    )


def _checks(node: Any, line: int, where: str, at: _Where) -> tuple[Check, ...]:
    node = _mapping(node, line, where, at)
    if not node:
        raise at.error(line, where, f"name at least one check: {', '.join(CHECK_ORDER)}")
    _unknown(node, CHECK_ORDER, node, f"{where}.", at)
    checks = []
    for kind in node:
        key_line = node.key_lines[kind]
        body = node[kind]
        body = Located() if body is None else _mapping(body, key_line, f"{where}.{kind}", at)
        fields = CHECK_FIELDS[kind]
        _unknown(body, list(fields), body, f"{where}.{kind}.", at)
        params = dict(CHECK_DEFAULTS.get(kind, {}))
        for key, value in body.items():
            try:
                params[key] = fields[key](value)
            except GpufitError as error:
                raise at.error(body.key_lines[key], f"{where}.{kind}.{key}", str(error)) from None
        if kind == "generates" and "prompt" in params and "prompt_tokens" in params:
            raise at.error(key_line, f"{where}.generates", "give prompt or prompt_tokens, not both")
        if kind == "generates" and "prompt" not in params and "prompt_tokens" not in params:
            params["prompt_tokens"] = 16
        checks.append(Check(kind, params, key_line, dict(body.key_lines)))
    return tuple(checks)


def _target(
    node: Any, index: int, line: int, base: Path, at: _Where, suite_baseline: BaselinePolicy
) -> Target:
    where = f"targets[{index}]"
    node = _mapping(node, line, where, at)
    _unknown(node, TARGET_FIELDS, node, f"{where}.", at)
    for required in TARGET_REQUIRED:
        if required not in node:
            raise at.error(node.line, where, f"missing required key {required!r}")
    lines = node.key_lines

    def field_value(key: str) -> Any:
        if key not in node:
            return TARGET_DEFAULTS.get(key)
        try:
            return TARGET_KINDS[key](node[key])
        except GpufitError as error:
            raise at.error(lines[key], f"{where}.{key}", str(error)) from None

    values = {key: field_value(key) for key in TARGET_KINDS}
    weights = values["weights"]
    openai = values["backend"] == "openai"
    for key in OPENAI_ONLY:
        if key in node and not openai:
            raise at.error(
                lines[key], f"{where}.{key}", "only for backend: openai (a served model)"
            )
    if "model" not in node and not openai:
        raise at.error(node.line, where, "missing required key 'model'")
    model: Path | None = None
    if "model" in node:
        try:
            model = resolve_model(values["model"], base)
        except GpufitError as error:
            raise at.error(lines["model"], f"{where}.model", str(error)) from None
    if model is None or openai:
        pass  # a served model's weights are the engine's business; config.json is enough
    elif weights == "checkpoint" and not any(model.glob("*.safetensors")):
        raise at.error(
            lines["model"],
            f"{where}.model",
            f"weights: checkpoint needs a folder with *.safetensors files; {model} "
            "has none (use weights: random for a dry run from config.json)",
        )
    folder = None if model is None else model if model.is_dir() else model.parent
    has_tokenizer = (
        folder is not None
        and folder.is_dir()
        and any((folder / f).exists() for f in TOKENIZER_FILES)
    )
    checks = _checks(node["checks"], lines["checks"], f"{where}.checks", at)
    _capabilities(checks, values["backend"], model is not None, where, at)
    launch = _launch(node.get("launch"), lines.get("launch", node.line), f"{where}.launch", at)
    if launch is not None:
        launch = dataclasses.replace(launch, cwd=base)
    endpoint = values["endpoint"]
    if openai:
        endpoint = _endpoint(endpoint, launch, lines.get("endpoint", node.line), where, at)
    device = _placed_device(node, values["device"], openai and launch is None, checks, where, at)
    for check in checks:
        if openai:
            continue  # the server's tokenizer reads text prompts
        if check.kind == "generates" and "prompt" in check.params and not has_tokenizer:
            raise at.error(
                check.line,
                f"{where}.checks.generates.prompt",
                f"a text prompt needs a tokenizer, and {_model_words(node['model'], folder)} "
                "has none "
                f"({', '.join(TOKENIZER_FILES)}); give prompt_tokens: N instead",
            )
    return Target(
        name=values["name"],
        model=model,
        weights=weights,
        backend=values["backend"],
        dtype=values["dtype"],
        device=device,
        context=values["context"],
        requirement=_requires(
            node.get("requires"), lines.get("requires", node.line), f"{where}.requires", at
        ),
        checks=checks,
        trust_remote_code=values["trust_remote_code"],
        seed=values["seed"],
        line=node.line,
        has_tokenizer=has_tokenizer,
        baseline=_baseline(
            node.get("baseline"),
            lines.get("baseline", node.line),
            f"{where}.baseline",
            at,
            suite_baseline,
        ),
        endpoint=endpoint,
        served_model=values["served_model"],
        api_key_env=values["api_key_env"],
        launch=launch,
    )


def _placed_device(
    node: Located, device: str, remote: bool, checks: tuple[Check, ...], where: str, at: _Where
) -> str:
    """The target's device: ``remote`` by default for a server gpufit does not start (an
    openai target without ``launch:``), whose hardware this machine's probe cannot judge."""
    lines = node.key_lines
    if "device" not in node:
        device = REMOTE if remote else device
    elif device == REMOTE and not remote:
        raise at.error(
            lines["device"],
            f"{where}.device",
            "remote is a server gpufit does not start (backend: openai with endpoint: and no "
            "launch:); a launched server or an in-process model runs here: use cuda, cuda:N "
            "or cpu",
        )
    if device != REMOTE:
        return device
    why = (
        "this target is a remote endpoint (no launch:), so its hardware is the server's and "
        "this machine's GPUs are never used"
    )
    if "requires" in node and isinstance(node["requires"], Located) and node["requires"]:
        key = next(iter(node["requires"]))
        raise at.error(
            node["requires"].key_lines[key],
            f"{where}.requires.{key}",
            f"judges this machine's GPUs (or its torch), but {why}; drop it (gate the "
            "server's hardware with the deployment's own checks), or launch the server here",
        )
    for check in checks:
        if check.kind == "fits":
            raise at.error(
                check.line,
                f"{where}.checks.fits",
                f"estimates the model on this machine's memory, but {why}; drop it, or ask "
                "`gpufit fit MODEL --gpu CARD` about the server's cards",
            )
    return device


def _capabilities(
    checks: tuple[Check, ...], backend: str, has_model: bool, where: str, at: _Where
) -> None:
    """A check that needs what the backend cannot measure is an error now, not at run time."""
    from pytest_gpufit.backends import unsupported  # light: the table, no backend imported

    for check in checks:
        if check.kind == "fits" and not has_model:
            raise at.error(
                check.line,
                f"{where}.checks.fits",
                "the fit estimate needs the model's config: give model: (a folder with "
                "config.json, or a shipped model id)",
            )
        problem = unsupported(backend, check.kind, check.params)
        if problem is None:
            continue
        key, message = problem
        line = check.field_lines.get(key, check.line) if key else check.line
        name = f"{where}.checks.{check.kind}" + (f".{key}" if key else "")
        raise at.error(line, name, message)


def _launch(node: Any, line: int, where: str, at: _Where) -> Launch | None:
    """``launch: {command: [...], ready_timeout_s, env: {NAME: value}, log_forbid: [...]}``."""
    if node is None:
        return None
    node = _mapping(node, line, where, at)
    _unknown(node, LAUNCH_FIELDS, node, f"{where}.", at)
    if "command" not in node:
        raise at.error(node.line, where, "missing required key 'command' (the server's argv)")
    lines = node.key_lines
    command = node["command"]
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as error:
            raise at.error(lines["command"], f"{where}.command", str(error)) from None
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in command)
    ):
        raise at.error(
            lines["command"],
            f"{where}.command",
            f"expected the command as a list of arguments, got {command!r}",
        )
    timeout = 900.0
    if "ready_timeout_s" in node:
        try:
            timeout = _seconds(node["ready_timeout_s"])
        except GpufitError as error:
            raise at.error(
                lines["ready_timeout_s"], f"{where}.ready_timeout_s", str(error)
            ) from None
    env = node.get("env") or {}
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and re.match(_ENV_NAME, k) and isinstance(v, (str, int, float))
        for k, v in env.items()
    ):
        raise at.error(
            lines.get("env", node.line),
            f"{where}.env",
            f"expected a mapping of variable NAME: value, got {env!r}",
        )
    forbid = node.get("log_forbid") or []
    if isinstance(forbid, str):
        forbid = [forbid]
    if not isinstance(forbid, list) or not all(isinstance(f, str) and f for f in forbid):
        raise at.error(
            lines.get("log_forbid", node.line),
            f"{where}.log_forbid",
            f"expected a list of texts that must not appear in the server log, got {forbid!r}",
        )
    return Launch(
        command=tuple(str(a) for a in command),
        ready_timeout_s=timeout,
        env=tuple((str(k), str(v)) for k, v in env.items()),
        log_forbid=tuple(forbid),
        line=node.line,
    )


def _endpoint(
    endpoint: str | None, launch: Launch | None, line: int, where: str, at: _Where
) -> str:
    """The API base URL; ``{port}`` only where gpufit launches the server and picks the port."""
    if endpoint is None:
        if launch is None:
            raise at.error(
                line,
                where,
                "backend: openai needs endpoint: (the URL of a running server, such as "
                "http://127.0.0.1:8000/v1) or launch: (a command gpufit starts)",
            )
        endpoint = DEFAULT_ENDPOINT
    if "{port}" in endpoint and launch is None:
        raise at.error(
            line,
            f"{where}.endpoint",
            "{port} is the port gpufit picks for a launched server; add launch: or give the "
            "running server's port",
        )
    if (
        launch is not None
        and "{port}" in endpoint
        and not any("{port}" in a for a in launch.command)
    ):
        raise at.error(
            launch.line,
            f"{where}.launch.command",
            "the endpoint uses {port}, so the command must pass it to the server "
            "(such as --port {port})",
        )
    return endpoint


def _model_words(model: Any, folder: Path | None) -> str:
    """How a message names a model: a shipped id is a config, not a folder of the package."""
    shipped = Path(__file__).parent.parent / "fit" / "models"
    return f"the shipped config {model!r}" if folder == shipped else str(folder)


def parse_suite(path: Path) -> Suite:
    """Read and validate one suite file; every problem is a GpufitError naming file and line."""
    at = _Where(path)
    data = load_yaml(path)
    if data is None:
        raise GpufitError(f"{path}:1: empty suite file; it needs 'suite' and 'targets'")
    if not isinstance(data, Located):
        raise GpufitError(
            f"{path}:1: a suite file must be a YAML mapping with 'suite' and "
            f"'targets', got {type(data).__name__}"
        )
    _unknown(data, SUITE_FIELDS, data, "", at)
    for required in ("suite", "targets"):
        if required not in data:
            raise at.error(1, required, "missing required key")
    try:
        name = _text(data["suite"])
    except GpufitError as error:
        raise at.error(data.key_lines["suite"], "suite", str(error)) from None
    targets_node = data["targets"]
    line = data.key_lines["targets"]
    if not isinstance(targets_node, list) or not targets_node:
        raise at.error(line, "targets", "expected a list of at least one target")
    targets = []
    seen: dict[str, int] = {}
    baseline = _baseline(data.get("baseline"), data.key_lines.get("baseline", 1), "baseline", at)
    for index, node in enumerate(targets_node):
        target = _target(node, index, line, path.parent, at, baseline)
        if target.name in seen:
            raise at.error(
                target.line,
                f"targets[{index}].name",
                f"duplicate target name {target.name!r} (first at line {seen[target.name]})",
            )
        seen[target.name] = target.line
        targets.append(target)
    requirement = _requires(data.get("requires"), data.key_lines.get("requires", 1), "requires", at)
    remote = [t for t in targets if t.device == REMOTE]
    if requirement is not None and remote:
        raise at.error(
            data.key_lines["requires"],
            "requires",
            f"judges this machine's GPUs (or its torch), but target {remote[0].name!r} (line "
            f"{remote[0].line}) is a remote endpoint (no launch:), whose hardware is the "
            "server's; move requires: to the targets that run here, or put the remote target "
            "in a suite of its own",
        )
    return Suite(name, path, requirement, tuple(targets))
