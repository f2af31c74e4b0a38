"""Generate ``runners.schema.json`` (the runner-pool file's contract for editors) from the
validator's own records in ``pool.py``::

    python -m pytest_gpufit.fleet.json_schema           # rewrites fleet/runners.schema.json
    python -m pytest_gpufit.fleet.json_schema --check   # exit 1 when the file is stale

``tests/test_fleet_pool.py`` runs ``--check``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_gpufit import schema_file
from pytest_gpufit.fleet.pool import POOL, RUNNER_CLASS

MODULE = "pytest_gpufit.fleet.json_schema"
SCHEMA_PATH = Path(__file__).with_name("runners.schema.json")


def build_schema() -> dict[str, Any]:
    """The JSON Schema of a runner-pool file, from the records the validator reads."""
    runners = {"type": "array", "minItems": 1, "items": RUNNER_CLASS.schema()}
    pool = POOL.schema({"runners": runners})
    return schema_file.document(
        MODULE, "pytest_gpufit/fleet/runners.schema.json", "pytest-gpufit runner pool", pool
    )


def render() -> str:
    return schema_file.render(build_schema())


def main(argv: list[str] | None = None) -> int:
    return schema_file.write_or_check(argv, render(), SCHEMA_PATH, MODULE)


if __name__ == "__main__":
    raise SystemExit(main())
