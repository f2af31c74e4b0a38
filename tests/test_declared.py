"""Declared fields (``pytest_gpufit/declared``): one declaration per field, read by the suite and
runner-pool validators and turned into their JSON Schemas (issue 19.7)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_gpufit.declared.records import Field, Record, Wording, closest
from pytest_gpufit.declared.values import NESTED, choice, matching, text, whole_numbers
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fleet import json_schema as pool_json_schema
from pytest_gpufit.fleet.pool import POOL, RUNNER_CLASS, load_pool
from pytest_gpufit.suites import json_schema as suite_json_schema
from pytest_gpufit.suites.schema import (
    BASELINE,
    LAUNCH,
    SUITE,
    TARGET,
    TARGET_KINDS,
    parse_suite,
)

WORDING = Wording(
    lambda where, key, hint, accepted: (f"{where}.{key}", f"unknown key; hint={hint} ({accepted})"),
    lambda where, key, description: (where, f"missing {key!r} ({description})"),
)
RECORD = Record(
    {
        "name": Field(text, required=True, description="its name"),
        "mode": Field(choice(("a", "b")), default="a", schema_default=True),
        "count": Field(whole_numbers(1, 9)),
        "inner": Field(NESTED),
    },
    WORDING,
)


# ---- the layer, as pure units ----------------------------------------------------------------


def test_a_record_reads_defaults_then_the_given_values_and_passes_nested_ones_through() -> None:
    inner = {"x": [1]}
    values = RECORD.read({"count": 3.0, "name": "n", "inner": inner}, "f.yaml", "r")
    assert values == {"mode": "a", "count": 3, "name": "n", "inner": inner}
    assert values["inner"] is inner
    assert "count" not in RECORD.read({"name": "n"}, "f.yaml", "r")  # no default: absent


@pytest.mark.parametrize(
    ("node", "message"),
    [
        # The first problem wins: an unknown key, then a missing one, then a bad value.
        ({"nmae": "n", "count": 0}, "f.yaml:1: r.nmae: unknown key; hint=name (name, mode,"),
        ({"count": 0}, "f.yaml:1: r: missing 'name' (its name)"),
        ({"name": "", "count": 0}, "f.yaml:1: r.name: expected text, got ''"),
        ({"name": "n", "mode": "c"}, "f.yaml:1: r.mode: expected one of a, b, got 'c'"),
    ],
)
def test_every_error_names_file_line_and_field(node: dict[str, Any], message: str) -> None:
    with pytest.raises(GpufitError) as error:
        RECORD.read(node, "f.yaml", "r")
    assert str(error.value).startswith(message), str(error.value)


def test_an_error_gives_the_line_of_the_key_in_the_file(tmp_path: Path) -> None:
    from pytest_gpufit.yaml_lines import load_yaml

    path = tmp_path / "f.yaml"
    path.write_text("# a comment\nname: n\n\ncount: 12\n")
    with pytest.raises(GpufitError, match=r"f.yaml:4: count: expected at most 9, got 12$"):
        RECORD.read(load_yaml(path), path)


def test_the_schema_comes_from_the_same_fields() -> None:
    schema = RECORD.schema({"inner": {"type": "object"}}, nullable=True)
    assert schema == {
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "its name"},
            "mode": {"enum": ["a", "b"], "default": "a"},
            "count": {"type": "integer", "minimum": 1, "maximum": 9},
            "inner": {"type": "object"},
        },
        "required": ["name"],
    }
    with pytest.raises(KeyError):  # a nested field must be given its schema
        RECORD.schema()


def test_a_pattern_is_matched_whole_as_json_schema_does() -> None:
    """``re.match`` lets ``$`` match before a final newline; a JSON Schema pattern (ECMA 262)
    does not. The validator matches the pattern whole, so the two agree."""
    kind = matching(r"^(cpu|cuda)$", "cpu or cuda")
    assert kind("cuda") == "cuda"
    for value in ("cuda\n", " cuda", "cud", 5, None):
        with pytest.raises(GpufitError, match="expected cpu or cuda"):
            kind(value)


def test_closest_and_a_described_kind() -> None:
    assert closest("plcement", ["runners", "placement"]) == "placement"
    assert closest(3, ["runners"]) is None
    described = whole_numbers(1, 5).described("runs")
    assert described(2.0) == 2 and described.schema["description"] == "runs"


# ---- each file's records are the ones its schema lists ---------------------------------------


def _records() -> dict[str, tuple[Record, dict[str, Any]]]:
    suite = suite_json_schema.build_schema()
    target = suite["properties"]["targets"]["items"]
    pool = pool_json_schema.build_schema()
    return {
        "suite": (SUITE, suite),
        "target": (TARGET, target),
        "launch": (LAUNCH, target["properties"]["launch"]),
        "baseline": (BASELINE, suite["properties"]["baseline"]),
        "pool": (POOL, pool),
        "runner class": (RUNNER_CLASS, pool["properties"]["runners"]["items"]),
    }


@pytest.mark.parametrize("name", ["suite", "target", "launch", "baseline", "pool", "runner class"])
def test_a_record_and_its_schema_list_the_same_keys(name: str) -> None:
    record, schema = _records()[name]
    assert list(schema["properties"]) == list(record.fields)
    assert schema.get("required", []) == list(record.required)
    assert schema["additionalProperties"] is False


# ---- validator and schema agree on the fields that carry a pattern or a shape ------------------

LAUNCH_SCHEMA = _records()["launch"][1]["properties"]
CLASS_SCHEMA = _records()["runner class"][1]["properties"]
AGREE: dict[str, tuple[Any, dict[str, Any], list[Any]]] = {
    "target.endpoint": (
        TARGET_KINDS["endpoint"],
        _records()["target"][1]["properties"]["endpoint"],
        ["http://h:1/v1", "https://h", "ftp://h", "http://", "http://h /v1", "", 5],
    ),
    "target.api_key_env": (
        TARGET_KINDS["api_key_env"],
        _records()["target"][1]["properties"]["api_key_env"],
        ["OPENAI_API_KEY", "_X1", "1X", "sk-123", "", "A B", None],
    ),
    "launch.command": (
        LAUNCH.fields["command"].kind,
        LAUNCH_SCHEMA["command"],
        [["srv"], ["srv", 8000, 1.5], "srv --port 1", [], ["srv", True], ["srv", None], 5],
    ),
    "launch.env": (
        LAUNCH.fields["env"].kind,
        LAUNCH_SCHEMA["env"],
        [{"A": "1", "B_2": 3}, {"1A": "x"}, {"A-B": "x"}, {"A": [1]}, {"A": None}, {}, [1]],
    ),
    "launch.log_forbid": (
        LAUNCH.fields["log_forbid"].kind,
        LAUNCH_SCHEMA["log_forbid"],
        [["a", "b"], "oops", [""], [1], []],
    ),
    "runner.name": (
        RUNNER_CLASS.fields["name"].kind,
        CLASS_SCHEMA["name"],
        ["h100x2", "a.b_c-d", "-a", "a b", "x" * 64, "", 12, "h100x²"],
    ),
    "runner.labels": (
        RUNNER_CLASS.fields["labels"].kind,
        CLASS_SCHEMA["labels"],
        [["gpu"], ["a b"], [" gpu"], ["gpu "], [""], ["gpu", "gpu"], [], ["gpu", 3], "gpu"],
    ),
    "runner.driver": (
        RUNNER_CLASS.fields["driver"].kind,
        CLASS_SCHEMA["driver"],
        [">=570", "==570.86", " >= 570 ", "570", "~=570", ">570", ">=x", 570],
    ),
    "runner.shards": (
        RUNNER_CLASS.fields["shards"].kind,
        CLASS_SCHEMA["shards"],
        [1, 256, 0, 257, True, "2", -1],
    ),
}


def _accepts(kind: Any, value: Any) -> bool:
    try:
        kind(value)
    except GpufitError:
        return False
    return True


@pytest.mark.parametrize("field", AGREE)
def test_the_validator_and_the_schema_accept_the_same_values(field: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    kind, schema, values = AGREE[field]
    validator = jsonschema.Draft202012Validator(schema)
    disagree = [v for v in values if _accepts(kind, v) != validator.is_valid(v)]
    assert not disagree, f"{field}: the validator and the JSON Schema differ on {disagree}"
    assert any(_accepts(kind, v) for v in values) and not all(_accepts(kind, v) for v in values)


# ---- what users meet --------------------------------------------------------------------------

TARGET_TEXT = """suite: s
targets:
  - name: t
    model: qwen3-0.6b
    weights: random
    checks:
      fits:
"""


def test_a_check_left_empty_collects_as_one_with_its_defaults(pytester: pytest.Pytester) -> None:
    """``fits:`` (null), which the JSON Schema allows, was an AttributeError from the plugin's
    own YAML mapping (``Located()`` had no key lines) instead of a check."""
    pytester.makefile(".gpufit.yaml", s=TARGET_TEXT)
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["s.gpufit.yaml::t::fits"])


def test_a_missing_top_level_key_is_named_at_the_mapping(tmp_path: Path) -> None:
    path = tmp_path / "s.gpufit.yaml"
    path.write_text("# yaml-language-server: $schema=...\nsuite: s\n")
    with pytest.raises(GpufitError, match=r"s.gpufit.yaml:2: targets: missing required key$"):
        parse_suite(path)


def test_a_launch_without_command_says_what_the_command_is(tmp_path: Path) -> None:
    path = tmp_path / "s.gpufit.yaml"
    path.write_text(
        "suite: s\ntargets:\n  - name: t\n    backend: openai\n"
        "    launch: {ready_timeout_s: 9}\n    checks: {serves: {}}\n"
    )
    with pytest.raises(GpufitError) as error:
        parse_suite(path)
    assert str(error.value) == (
        f"{path}:5: targets[0].launch: missing required key 'command' (the server's command "
        "line; {port} is the port gpufit picks)"
    )


def test_a_pool_without_runners_says_what_they_are(tmp_path: Path) -> None:
    path = tmp_path / "gpufit-runners.yaml"
    path.write_text("placement: one\n")
    with pytest.raises(GpufitError) as error:
        load_pool(path)
    assert str(error.value) == (
        f"{path}:1: pool: missing 'runners': the runner classes, in order of preference"
    )


def test_importing_the_plugin_loads_no_validator_and_no_pydantic() -> None:
    """The declared layer and the validators load only when a YAML file is read."""
    lazy = (
        "pydantic",
        "pytest_gpufit.declared",
        "pytest_gpufit.suites.schema",
        "pytest_gpufit.fleet.pool",
    )
    code = (
        f"import sys, pytest_gpufit.plugin; print(sorted(m for m in {lazy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
