"""The suite file contract: parse and validate into frozen records, with errors that name the
file, the line, the field and what is expected."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pytest_gpufit.baseline import BaselinePolicy, parse_confirm, parse_missing, parse_tolerances
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.spec import resolve_model
from pytest_gpufit.markers import YAML_KEYS, requirement_from_yaml
from pytest_gpufit.requirements import Requirement
from pytest_gpufit.suites.yaml_lines import Located, load_yaml
from pytest_gpufit.units import (
    parse_percent,
    parse_size,
    percent_json_schema,
    shown,
    size_json_schema,
)

CHECK_ORDER = ("fits", "loads", "generates", "throughput", "precision")
DTYPES = ("fp32", "bf16", "fp16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass(frozen=True)
class Check:
    kind: str
    params: dict[str, Any]
    line: int


@dataclass(frozen=True)
class Target:
    name: str
    model: Path
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
            raise GpufitError(f"expected a whole number >= {minimum}, got {value!r}")
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
_DEVICE = r"^(cpu|cuda|cuda:[0-9]{1,4})$"  # ASCII digits: 'cuda:²' is no device


@_kind({"type": "string", "pattern": _DEVICE})
def _device(value: Any) -> str:
    if not isinstance(value, str) or not re.match(_DEVICE, value):
        raise GpufitError(f"expected cuda, cuda:N or cpu, got {value!r}")
    return value


CHECK_FIELDS: dict[str, dict[str, Kind]] = {
    "fits": {},
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
    "backend": _choice(("transformers",)),
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
TARGET_FIELDS = (*TARGET_KINDS, "requires", "checks", "baseline")
TARGET_REQUIRED = ("name", "model", "checks")
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
        checks.append(Check(kind, params, key_line))
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
    try:
        model = resolve_model(values["model"], base)
    except GpufitError as error:
        raise at.error(lines["model"], f"{where}.model", str(error)) from None
    if weights == "checkpoint" and not any(model.glob("*.safetensors")):
        raise at.error(
            lines["model"],
            f"{where}.model",
            f"weights: checkpoint needs a folder with *.safetensors files; {model} "
            "has none (use weights: random for a dry run from config.json)",
        )
    folder = model if model.is_dir() else model.parent
    has_tokenizer = model.is_dir() and any((folder / f).exists() for f in TOKENIZER_FILES)
    checks = _checks(node["checks"], lines["checks"], f"{where}.checks", at)
    for check in checks:
        if check.kind == "generates" and "prompt" in check.params and not has_tokenizer:
            raise at.error(
                check.line,
                f"{where}.checks.generates.prompt",
                f"a text prompt needs a tokenizer, and {folder} has none "
                f"({', '.join(TOKENIZER_FILES)}); give prompt_tokens: N instead",
            )
    return Target(
        name=values["name"],
        model=model,
        weights=weights,
        backend=values["backend"],
        dtype=values["dtype"],
        device=values["device"],
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
    )


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
    return Suite(name, path, requirement, tuple(targets))
