"""The suite file contract: parse and validate into frozen records, with errors that name the
file, the line, the field and what is expected."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gpufit.baseline import BaselinePolicy, parse_confirm, parse_missing, parse_tolerances
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.spec import resolve_model
from pytest_gpufit.requirements import Requirement, requirement_from_marker
from pytest_gpufit.suites.yaml_lines import Located, load_yaml
from pytest_gpufit.units import parse_percent, parse_size

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


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GpufitError(f"expected a whole number >= 1, got {value!r}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GpufitError(f"expected a whole number >= 0, got {value!r}")
    return value


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e9`` as text: accept text that is a plain number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _positive_number(value: Any) -> float:
    value = _number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise GpufitError(f"expected a number > 0, got {value!r}")
    return float(value)


def _fraction(value: Any) -> float:
    value = _number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise GpufitError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise GpufitError(f"expected text, got {value!r}")
    return value


def _token_list(value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise GpufitError(f"expected a list of token ids, got {value!r}")
    return list(value)


def _seconds(value: Any) -> float:
    if isinstance(value, str) and value.strip().endswith("s"):
        try:
            value = float(value.strip()[:-1])
        except ValueError:
            pass
    return _positive_number(value)


def _size(value: Any) -> int:
    return parse_size(value, "size")


def _percent(value: Any) -> float:
    return parse_percent(value, "percentage")


def _reference(value: Any) -> str:
    if value not in ("fp32", "golden"):
        raise GpufitError(f"expected fp32 or golden (the baseline's stored tokens), got {value!r}")
    return str(value)


Kind = Callable[[Any], Any]

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
        "batch": _positive_int,
        "warmup": _count,
        "repeats": _positive_int,
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
REQUIRES_FIELDS = (
    "count",
    "name",
    "vram",
    "free_vram",
    "compute_capability",
    "dtype",
    "driver",
    "cuda",
    "torch",
)
TARGET_FIELDS = (
    "name",
    "model",
    "weights",
    "backend",
    "dtype",
    "device",
    "context",
    "requires",
    "checks",
    "trust_remote_code",
    "seed",
    "baseline",
)
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
        marker, args, kwargs = {
            "count": ("requires_gpu", (), {"count": value}),
            "name": ("requires_gpu", (), {"name": value}),
            "vram": ("requires_vram", (value,), {}),
            "free_vram": ("requires_vram", (value,), {"free": True}),
            "compute_capability": ("requires_compute_capability", (value,), {}),
            "dtype": ("requires_dtype", tuple(value) if isinstance(value, list) else (value,), {}),
            "driver": ("requires_driver", (value,), {}),
            "cuda": ("requires_cuda", (value,), {}),
            "torch": ("requires_torch", (value,), {}),
        }[key]
        try:
            part = requirement_from_marker(marker, args, kwargs)
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
    for required in ("name", "model", "checks"):
        if required not in node:
            raise at.error(node.line, where, f"missing required key {required!r}")
    lines = node.key_lines

    def field_value(key: str, kind: Kind, default: Any) -> Any:
        if key not in node:
            return default
        try:
            return kind(node[key])
        except GpufitError as error:
            raise at.error(lines[key], f"{where}.{key}", str(error)) from None

    def choice(key: str, options: tuple[str, ...], default: str) -> str:
        value = node.get(key, default)
        if value not in options:
            raise at.error(
                lines.get(key, node.line),
                f"{where}.{key}",
                f"expected one of {', '.join(options)}, got {value!r}",
            )
        return str(value)

    name = field_value("name", _text, None)
    weights = choice("weights", ("checkpoint", "random"), "checkpoint")
    try:
        model = resolve_model(field_value("model", _text, None), base)
    except GpufitError as error:
        raise at.error(lines["model"], f"{where}.model", str(error)) from None
    if weights == "checkpoint" and not any(model.glob("*.safetensors")):
        raise at.error(
            lines["model"],
            f"{where}.model",
            f"weights: checkpoint needs a folder with *.safetensors files; {model} "
            "has none (use weights: random for a dry run from config.json)",
        )
    device = str(node.get("device", "cuda"))
    if not (device in ("cuda", "cpu") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise at.error(
            lines.get("device", node.line),
            f"{where}.device",
            f"expected cuda, cuda:N or cpu, got {device!r}",
        )
    trust = node.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise at.error(
            lines["trust_remote_code"],
            f"{where}.trust_remote_code",
            f"expected true or false, got {trust!r}",
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
        name=name,
        model=model,
        weights=weights,
        backend=choice("backend", ("transformers",), "transformers"),
        dtype=choice("dtype", DTYPES, "bf16"),
        device=device,
        context=field_value("context", _positive_int, None),
        requirement=_requires(
            node.get("requires"), lines.get("requires", node.line), f"{where}.requires", at
        ),
        checks=checks,
        trust_remote_code=trust,
        seed=field_value("seed", _count, 0),
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
