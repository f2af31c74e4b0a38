"""Generate ``schema.json`` (the suite contract for editors) from the validator's own records.

Run after changing a record in ``schema.py``, a kind in ``kinds.py`` or ``fields.py``, or the
marker table in ``markers.py``::

    python -m pytest_gpufit.suites.json_schema           # rewrites pytest_gpufit/suites/schema.json
    python -m pytest_gpufit.suites.json_schema --check   # exit 1 when the file is stale

``tests/test_suite_contract.py`` regenerates it and compares with the shipped file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_gpufit import schema_file
from pytest_gpufit.declared.records import object_schema
from pytest_gpufit.markers import requires_json_schema
from pytest_gpufit.suites.kinds import KINDS, model_free
from pytest_gpufit.suites.schema import BASELINE, LAUNCH, SUITE, TARGET, check_record

MODULE = "pytest_gpufit.suites.json_schema"
SCHEMA_PATH = Path(__file__).with_name("schema.json")


def _checks() -> dict[str, Any]:
    properties = {
        name: {"oneOf": [{"type": "null"}, check_record(kind).schema()]}
        for name, kind in KINDS.items()
    }
    return {**object_schema(properties), "minProperties": 1}


def _model_required() -> dict[str, Any]:
    """``model:`` is required, unless every check the target names needs no model."""
    required: dict[str, Any] = {"required": ["model"]}
    free = [name for name in KINDS if model_free([name])]
    if not free:
        return required
    only_free = {"properties": {"checks": {"propertyNames": {"enum": free}}}}
    return {"anyOf": [required, only_free]}


def build_schema() -> dict[str, Any]:
    """The JSON Schema of a suite file, from the records the validator reads."""
    requires = {**requires_json_schema(), "type": ["object", "null"]}
    baseline = BASELINE.schema(nullable=True)
    target = {
        **TARGET.schema(
            {
                "requires": requires,
                "checks": _checks(),
                "baseline": baseline,
                "launch": LAUNCH.schema(),
            }
        ),
        # model: for the transformers backend (the default); a served target may omit it.
        "if": {"not": {"properties": {"backend": {"const": "openai"}}, "required": ["backend"]}},
        "then": _model_required(),
    }
    targets = {"type": "array", "minItems": 1, "items": target}
    suite = SUITE.schema({"requires": requires, "targets": targets, "baseline": baseline})
    return schema_file.document(
        MODULE, "pytest_gpufit/suites/schema.json", "pytest-gpufit suite", suite
    )


def render() -> str:
    return schema_file.render(build_schema())


def main(argv: list[str] | None = None) -> int:
    return schema_file.write_or_check(argv, render(), SCHEMA_PATH, MODULE)


if __name__ == "__main__":
    raise SystemExit(main())
