"""The suite file contract: parse and validate into frozen records, with errors that name the
file, the line, the field and what is expected."""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_gpufit.baseline import (
    METRICS,
    BaselinePolicy,
    parse_confirm,
    parse_missing,
    parse_tolerances,
)
from pytest_gpufit.baseline.compare import LEVEL_METRICS, MAX_CONFIRM, MISSING
from pytest_gpufit.declared.records import (
    Field,
    Record,
    Wording,
    check_keys,
    dotted,
    error_at,
    object_schema,
)
from pytest_gpufit.declared.values import NESTED, Kind, boolean, choice, kind, matching, text
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.spec import resolve_model
from pytest_gpufit.markers import YAML_KEYS, check_fit_models, requirement_from_yaml
from pytest_gpufit.requirements import Requirement
from pytest_gpufit.suites.fields import non_negative_int, positive_int, seconds
from pytest_gpufit.suites.kinds import KINDS, CheckKind, model_free, unsupported
from pytest_gpufit.suites.records import (  # re-exported: importable from here as before
    Check as Check,
)
from pytest_gpufit.suites.records import Launch as Launch
from pytest_gpufit.suites.records import Suite as Suite
from pytest_gpufit.suites.records import Target as Target
from pytest_gpufit.units import percent_json_schema
from pytest_gpufit.yaml_lines import Located, load_yaml

BACKENDS = ("transformers", "openai")
DTYPES = ("fp32", "bf16", "fp16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class _Where:
    """Builds 'file:line: field: message' errors."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, line: int, where: str, message: str) -> GpufitError:
        return error_at(self.path, line, where, message)


def _unknown_key(where: str, key: str, hint: str | None, accepted: str) -> tuple[str, str]:
    did_you_mean = f"; did you mean {hint!r}?" if hint else ""
    return dotted(where, key), f"unknown key{did_you_mean} (accepted: {accepted})"


def _missing_key(where: str, key: str, description: str) -> tuple[str, str]:
    if not where:  # a top-level key names itself
        return key, "missing required key"
    return where, f"missing required key {key!r}" + (f" ({description})" if description else "")


# How a suite file words an unknown key and a missing one.
WORDING = Wording(_unknown_key, _missing_key)

# Target field kinds (the shared ones are in pytest_gpufit/suites/fields.py).
# ASCII digits: 'cuda:²' is no device. remote: a server gpufit does not start (its hardware
# is the server's, not this machine's), the default of an openai target without launch:.
DEVICE = r"^(cpu|cuda|cuda:[0-9]{1,4}|remote)$"
REMOTE = "remote"
_device = matching(
    DEVICE, "cuda, cuda:N or cpu", " (or remote: a served model that gpufit does not launch)"
)
_url = matching(
    r"^https?://[^\s/]+(/[^\s]*)?$", "an http(s) URL such as http://127.0.0.1:{port}/v1"
)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_env_name = matching(ENV_NAME, "the NAME of an environment variable (such as OPENAI_API_KEY)")

# ---- launch: of an openai target --------------------------------------------------------------

_ARGUMENT = {"type": ["string", "number"]}


@kind({"oneOf": [{"type": "array", "items": _ARGUMENT, "minItems": 1}, {"type": "string"}]})
def _command(value: Any) -> tuple[str, ...]:
    command = value
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as error:
            raise GpufitError(str(error)) from None
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in command)
    ):
        raise GpufitError(f"expected the command as a list of arguments, got {command!r}")
    return tuple(str(a) for a in command)


@kind({"type": "object", "propertyNames": {"pattern": ENV_NAME}, "additionalProperties": _ARGUMENT})
def _env(value: Any) -> tuple[tuple[str, str], ...]:
    env = value or {}
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and re.fullmatch(ENV_NAME, k) and isinstance(v, (str, int, float))
        for k, v in env.items()
    ):
        raise GpufitError(f"expected a mapping of variable NAME: value, got {env!r}")
    return tuple((str(k), str(v)) for k, v in env.items())


@kind(
    {
        "oneOf": [
            {"type": "array", "items": {"type": "string", "minLength": 1}},
            {"type": "string", "minLength": 1},
        ]
    }
)
def _log_forbid(value: Any) -> tuple[str, ...]:
    forbid = value or []
    if isinstance(forbid, str):
        forbid = [forbid]
    if not isinstance(forbid, list) or not all(isinstance(f, str) and f for f in forbid):
        raise GpufitError(
            f"expected a list of texts that must not appear in the server log, got {forbid!r}"
        )
    return tuple(forbid)


# Its fields are Launch's: what the file leaves out keeps Launch's default.
LAUNCH = Record(
    {
        "command": Field(
            _command,
            required=True,
            description="the server's command line; {port} is the port gpufit picks",
        ),
        "ready_timeout_s": Field(seconds),
        "env": Field(_env),
        "log_forbid": Field(
            _log_forbid, description="texts (or regular expressions) that fail the target if logged"
        ),
    },
    WORDING,
)

# ---- baseline: of a suite, refined by a target ------------------------------------------------


def _tolerance_schema() -> dict[str, Any]:
    metrics = [*METRICS, *LEVEL_METRICS]
    return object_schema({metric: percent_json_schema() for metric in metrics}, nullable=True)


BASELINE = Record(
    {
        "tolerance": Field(Kind(parse_tolerances, _tolerance_schema)),
        "missing": Field(Kind(parse_missing, {"enum": list(MISSING)})),
        "confirm": Field(
            Kind(parse_confirm, {"type": "integer", "minimum": 0, "maximum": MAX_CONFIRM})
        ),
    },
    WORDING,
)

# ---- a target, and the suite -------------------------------------------------------------------

REQUIRES_FIELDS = tuple(YAML_KEYS)  # from the marker table (pytest_gpufit.markers.SPECS)
# requires, checks, baseline and launch are mappings read by their own records (NESTED).
TARGET = Record(
    {
        "name": Field(text, required=True),
        "model": Field(
            text,
            description="model folder or config.json (relative to the suite file), or a shipped "
            "model id",
        ),
        "weights": Field(choice(("checkpoint", "random")), default="checkpoint"),
        "backend": Field(choice(BACKENDS), default="transformers"),
        "endpoint": Field(_url),
        "served_model": Field(text),
        "api_key_env": Field(_env_name),
        "dtype": Field(choice(DTYPES), default="bf16"),
        "device": Field(_device, default="cuda"),
        "context": Field(positive_int),
        "trust_remote_code": Field(boolean, default=False),
        "seed": Field(non_negative_int, default=0),
        "requires": Field(NESTED),
        "checks": Field(NESTED, required=True),  # and model, for the transformers backend
        "baseline": Field(NESTED),
        "launch": Field(NESTED),
    },
    WORDING,
)
TARGET_FIELDS = tuple(TARGET.fields)
TARGET_KINDS: dict[str, Kind] = {  # the scalar fields
    key: field.kind for key, field in TARGET.fields.items() if field.kind is not NESTED
}
OPENAI_ONLY = ("endpoint", "served_model", "api_key_env", "launch")
DEFAULT_ENDPOINT = "http://127.0.0.1:{port}/v1"
SUITE = Record(
    {
        "suite": Field(text, required=True),
        "requires": Field(NESTED),
        "targets": Field(NESTED, required=True),
        "baseline": Field(NESTED),
    },
    WORDING,
)
SUITE_FIELDS = tuple(SUITE.fields)


def check_record(kind: CheckKind) -> Record:
    """The fields of one check kind (``kinds.py`` declares them) as a record."""
    fields = {key: Field(k, default=kind.defaults.get(key)) for key, k in kind.fields.items()}
    return Record(fields, WORDING)


def _mapping(value: Any, line: int, where: str, at: _Where) -> Located:
    if not isinstance(value, Located):
        raise at.error(line, where, f"expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _requires(node: Any, line: int, where: str, at: _Where) -> Requirement | None:
    if node is None:
        return None
    node = _mapping(node, line, where, at)
    check_keys(node, REQUIRES_FIELDS, at.path, where, WORDING)
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
    values = BASELINE.read(_mapping(node, line, where, at), at.path, where)
    return BaselinePolicy(
        tolerances={**base.tolerances, **values.get("tolerance", {})},
        missing=values.get("missing", base.missing),
        confirm=values.get("confirm", base.confirm),
    )


def _checks(node: Any, line: int, where: str, at: _Where) -> tuple[Check, ...]:
    node = _mapping(node, line, where, at)
    if not node:
        raise at.error(line, where, f"name at least one check: {', '.join(KINDS)}")
    check_keys(node, KINDS, at.path, where, WORDING)
    checks = []
    for name in node:
        key_line = node.key_lines[name]
        body = node[name]
        body = Located() if body is None else _mapping(body, key_line, f"{where}.{name}", at)
        check_kind = KINDS[name]
        params = check_record(check_kind).read(body, at.path, f"{where}.{name}")
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
    values = TARGET.read(node, at.path, where)
    lines = node.key_lines
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
    endpoint = values.get("endpoint")
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
        context=values.get("context"),
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
        served_model=values.get("served_model"),
        api_key_env=values.get("api_key_env"),
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
    return Launch(**LAUNCH.read(node, at.path, where), line=node.line)


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
    if launch is not None and "{port}" not in endpoint:
        # Readiness would poll the launched server's port while every check asked this one
        # (another server, perhaps an old fast one): issue 18.8.
        raise at.error(
            line,
            f"{where}.endpoint",
            f"{endpoint!r} names a fixed port, but launch: starts a server on the port gpufit "
            "picks, so the checks would ask another server than the one launched; write "
            "http://127.0.0.1:{port}/v1 (the command passing --port {port}), or drop launch: "
            "to check the server at this URL",
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
    name = SUITE.read(data, path)["suite"]
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
