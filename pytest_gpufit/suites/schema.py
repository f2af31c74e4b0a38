"""The suite file contract: parse and validate into frozen records, with errors that name the
file, the line, the field and what is expected."""

from __future__ import annotations

import dataclasses
import difflib
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_gpufit.baseline import BaselinePolicy, parse_confirm, parse_missing, parse_tolerances
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.spec import resolve_model
from pytest_gpufit.markers import YAML_KEYS, check_fit_models, requirement_from_yaml
from pytest_gpufit.requirements import Requirement
from pytest_gpufit.suites.fields import (
    Kind,
    boolean,
    choice,
    kind,
    non_negative_int,
    positive_int,
    seconds,
    text,
)
from pytest_gpufit.suites.kinds import KINDS, model_free, unsupported
from pytest_gpufit.suites.records import (  # re-exported: importable from here as before
    Check as Check,
)
from pytest_gpufit.suites.records import Launch as Launch
from pytest_gpufit.suites.records import Suite as Suite
from pytest_gpufit.suites.records import Target as Target
from pytest_gpufit.yaml_lines import Located, load_yaml

BACKENDS = ("transformers", "openai")
DTYPES = ("fp32", "bf16", "fp16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class _Where:
    """Builds 'file:line: field: message' errors."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, line: int, where: str, message: str) -> GpufitError:
        return GpufitError(f"{self.path}:{line}: {where}: {message}")


# Target field kinds (the shared ones are in pytest_gpufit/suites/fields.py).
# ASCII digits: 'cuda:²' is no device. remote: a server gpufit does not start (its hardware
# is the server's, not this machine's), the default of an openai target without launch:.
_DEVICE = r"^(cpu|cuda|cuda:[0-9]{1,4}|remote)$"
REMOTE = "remote"


@kind({"type": "string", "pattern": _DEVICE})
def _device(value: Any) -> str:
    if not isinstance(value, str) or not re.match(_DEVICE, value):
        raise GpufitError(
            f"expected cuda, cuda:N or cpu, got {value!r} (or remote: a served model that "
            "gpufit does not launch)"
        )
    return value


_URL = r"^https?://[^\s/]+(/[^\s]*)?$"


@kind({"type": "string", "pattern": _URL})
def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(_URL, value):
        raise GpufitError(
            f"expected an http(s) URL such as http://127.0.0.1:{{port}}/v1, got {value!r}"
        )
    return value


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


@kind({"type": "string", "pattern": _ENV_NAME})
def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.match(_ENV_NAME, value):
        raise GpufitError(
            f"expected the NAME of an environment variable (such as OPENAI_API_KEY), got {value!r}"
        )
    return value


REQUIRES_FIELDS = tuple(YAML_KEYS)  # from the marker table (pytest_gpufit.markers.SPECS)
# Scalar target fields and their kinds; requires, checks and baseline are mappings of their own.
TARGET_KINDS: dict[str, Kind] = {
    "name": text,
    "model": text,
    "weights": choice(("checkpoint", "random")),
    "backend": choice(BACKENDS),
    "endpoint": _url,
    "served_model": text,
    "api_key_env": _env_name,
    "dtype": choice(DTYPES),
    "device": _device,
    "context": positive_int,
    "trust_remote_code": boolean,
    "seed": non_negative_int,
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
        raise at.error(line, where, f"name at least one check: {', '.join(KINDS)}")
    _unknown(node, list(KINDS), node, f"{where}.", at)
    checks = []
    for name in node:
        key_line = node.key_lines[name]
        body = node[name]
        body = Located() if body is None else _mapping(body, key_line, f"{where}.{name}", at)
        check_kind = KINDS[name]
        fields = check_kind.fields
        _unknown(body, list(fields), body, f"{where}.{name}.", at)
        params = dict(check_kind.defaults)
        for key, value in body.items():
            try:
                params[key] = fields[key](value)
            except GpufitError as error:
                raise at.error(body.key_lines[key], f"{where}.{name}.{key}", str(error)) from None
        if check_kind.refine is not None:
            try:
                params = check_kind.refine(params)
            except GpufitError as error:
                raise at.error(key_line, f"{where}.{name}", str(error)) from None
        checks.append(Check(name, params, key_line, dict(body.key_lines)))
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
    if "model" not in node and not openai and not model_free(_names(node["checks"])):
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
        if "prompt" in check.params and not has_tokenizer:  # a text prompt, tokenized here
            raise at.error(
                check.line,
                f"{where}.checks.{check.kind}.prompt",
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


def _names(checks: Any) -> list[str]:
    """The check kinds a target names (before they are validated)."""
    return [str(name) for name in checks] if isinstance(checks, Located) else []


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
    for check in checks:
        reads_model = KINDS[check.kind].reads_model
        if reads_model is not None and not has_model:
            raise at.error(
                check.line,
                f"{where}.checks.{check.kind}",
                f"{reads_model} needs the model's config: give model: (a folder with "
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
            timeout = seconds(node["ready_timeout_s"])
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
        name = text(data["suite"])
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
