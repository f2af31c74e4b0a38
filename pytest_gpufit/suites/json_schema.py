"""Generate ``schema.json`` (the suite contract for editors) from the validator's own tables.

Run after changing a table in ``schema.py``, ``kinds.py`` or ``markers.py``::

    python -m pytest_gpufit.suites.json_schema           # rewrites pytest_gpufit/suites/schema.json
    python -m pytest_gpufit.suites.json_schema --check   # exit 1 when the file is stale

``tests/test_json_schema.py`` regenerates it and compares with the shipped file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_gpufit.baseline import METRICS
from pytest_gpufit.baseline.compare import LEVEL_METRICS, MAX_CONFIRM, MISSING
from pytest_gpufit.markers import requires_json_schema
from pytest_gpufit.suites.fields import KIND_SCHEMAS, MAX_REPEATS, Kind, seconds
from pytest_gpufit.suites.kinds import KINDS, model_free
from pytest_gpufit.suites.schema import (
    BASELINE_FIELDS,
    LAUNCH_FIELDS,
    SUITE_FIELDS,
    TARGET_FIELDS,
    TARGET_KINDS,
    TARGET_REQUIRED,
)
from pytest_gpufit.units import percent_json_schema

SCHEMA_PATH = Path(__file__).with_name("schema.json")
_DESCRIPTIONS = {
    "model": "model folder or config.json (relative to the suite file), or a shipped model id",
    "repeats": f"timed runs, at most {MAX_REPEATS}",
    "warmup": f"untimed runs first, at most {MAX_REPEATS}",
}


def _kind_schema(kind: Kind, key: str) -> dict[str, Any]:
    schema = dict(KIND_SCHEMAS[kind])
    if key in _DESCRIPTIONS:
        schema["description"] = _DESCRIPTIONS[key]
    return schema


def _object(properties: dict[str, Any], *, nullable: bool = False) -> dict[str, Any]:
    return {
        "type": ["object", "null"] if nullable else "object",
        "additionalProperties": False,
        "properties": properties,
    }


def _baseline() -> dict[str, Any]:
    metrics = [*METRICS, *LEVEL_METRICS]
    tolerance = _object({metric: percent_json_schema() for metric in metrics}, nullable=True)
    known = {
        "tolerance": tolerance,
        "missing": {"enum": list(MISSING)},
        "confirm": {"type": "integer", "minimum": 0, "maximum": MAX_CONFIRM},
    }
    # A key added to BASELINE_FIELDS appears here at once; give it a schema in ``known``.
    properties = {
        key: known.get(key, {"description": f"baseline.{key}"}) for key in BASELINE_FIELDS
    }
    return _object(properties, nullable=True)


def _launch() -> dict[str, Any]:
    """``launch:`` of a served target."""
    argument = {"type": ["string", "number"]}
    properties = {
        "command": {
            "oneOf": [{"type": "array", "items": argument, "minItems": 1}, {"type": "string"}],
            "description": "the server's command line; {port} is the port gpufit picks",
        },
        "ready_timeout_s": KIND_SCHEMAS[seconds],
        "env": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": argument,
        },
        "log_forbid": {
            "oneOf": [
                {"type": "array", "items": {"type": "string", "minLength": 1}},
                {"type": "string", "minLength": 1},
            ],
            "description": "texts (or regular expressions) that fail the target if logged",
        },
    }
    # A key added to LAUNCH_FIELDS appears here at once; give it a schema above.
    launch = _object({k: properties.get(k, {"description": k}) for k in LAUNCH_FIELDS})
    return {**launch, "required": ["command"]}


def _checks() -> dict[str, Any]:
    properties = {
        name: {
            "oneOf": [
                {"type": "null"},
                _object({key: _kind_schema(k, key) for key, k in kind.fields.items()}),
            ]
        }
        for name, kind in KINDS.items()
    }
    return {**_object(properties), "minProperties": 1}


def _model_required() -> dict[str, Any]:
    """``model:`` is required, unless every check the target names needs no model."""
    required: dict[str, Any] = {"required": ["model"]}
    free = [name for name in KINDS if model_free([name])]
    if not free:
        return required
    only_free = {"properties": {"checks": {"propertyNames": {"enum": free}}}}
    return {"anyOf": [required, only_free]}


def build_schema() -> dict[str, Any]:
    """The JSON Schema of a suite file, from the tables the validator uses."""
    requires = {**requires_json_schema(), "type": ["object", "null"]}
    target_properties: dict[str, Any] = {}
    for key in TARGET_FIELDS:
        if key in TARGET_KINDS:
            target_properties[key] = _kind_schema(TARGET_KINDS[key], key)
        else:
            target_properties[key] = {
                "requires": requires,
                "checks": _checks(),
                "baseline": _baseline(),
                "launch": _launch(),
            }[key]
    target = {
        **_object(target_properties),
        "required": list(TARGET_REQUIRED),
        # model: for the transformers backend (the default); a served target may omit it.
        "if": {"not": {"properties": {"backend": {"const": "openai"}}, "required": ["backend"]}},
        "then": _model_required(),
    }
    suite_properties = {
        "suite": KIND_SCHEMAS[TARGET_KINDS["name"]],  # text, like a target name
        "requires": requires,
        "targets": {"type": "array", "minItems": 1, "items": target},
        "baseline": _baseline(),
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/pytest-gpufit/pytest-gpufit/pytest_gpufit/suites/schema.json",
        "title": "pytest-gpufit suite",
        "description": "Generated by `python -m pytest_gpufit.suites.json_schema`; do not edit.",
        **_object({key: suite_properties[key] for key in SUITE_FIELDS}),
        "required": ["suite", "targets"],
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    from pytest_gpufit.schema_file import write_or_check

    return write_or_check(argv, render(), SCHEMA_PATH, "pytest_gpufit.suites.json_schema")


if __name__ == "__main__":
    raise SystemExit(main())
