"""The runner-pool file: its checks (one message with file and line each), its JSON Schema,
and the expect derived from a class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.expect import check_expect, parse_expect
from pytest_gpufit.fleet import json_schema
from pytest_gpufit.fleet.plan import class_inventory
from pytest_gpufit.fleet.pool import RunnerClass, derived_expect, load_pool
from pytest_gpufit.hardware.catalog import catalog

ROOT = Path(__file__).parent.parent
GOOD = """\
runners:
  - name: pro6000
    labels: [self-hosted, linux, gpu, rtx-pro-6000]
    gpus: 1*rtx-pro-6000-blackwell
    driver: ">=570"
  - name: h100x2
    labels: [self-hosted, linux, gpu, h100x2]
    gpus: 2*h100-sxm
    shards: 2
placement: every
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gpufit-runners.yaml"
    path.write_text(text, "utf-8")
    return path


def test_a_good_pool_file_reads_into_frozen_classes(tmp_path: Path) -> None:
    pool = load_pool(write(tmp_path, GOOD))
    assert [r.name for r in pool.runners] == ["pro6000", "h100x2"]
    h100 = pool.runners[1]
    assert h100.card_ids == ("h100-sxm", "h100-sxm") and h100.shards == 2 and h100.line == 6
    assert pool.runners[0].driver_floor == "570" and pool.placement == "every"
    with pytest.raises(AttributeError):
        h100.shards = 3  # type: ignore[misc]


BAD = [
    ("gpus: 1*rtx-pro-6000-blackwell", "gpus: 1*rtx-9090", 4, "unknown GPU id 'rtx-9090'"),
    ("name: h100x2", "name: pro6000", 6, "duplicate class name 'pro6000' (first at line 2"),
    # Artifacts, concurrency groups and durations files do not tell names apart by case.
    ("name: h100x2", "name: PRO6000", 6, "duplicate class name 'PRO6000' (first at line 2"),
    ("shards: 2", "shards: 0", 9, "runners[1].shards: expected a whole number of jobs from 1"),
    ("shards: 2", "shards: true", 9, "runners[1].shards"),
    ("shards: 2", "shards: '2'", 9, "runners[1].shards"),
    ("labels: [self-hosted, linux, gpu, h100x2]", "labels: h100x2", 7, "expected a list"),
    ("labels: [self-hosted, linux, gpu, h100x2]", "labels: [gpu, 3]", 7, "non-empty text"),
    ("shards: 2", "shard: 2", 9, "unknown key 'shard'; did you mean 'shards'?"),
    ("placement: every", "placment: every", 10, "pool: unknown key 'placment'"),
    ("placement: every", "placement: all", 10, "placement: expected every or one"),
    ('driver: ">=570"', "driver: 570", 5, "runners[0].driver: expected '>=VERSION'"),
    ('driver: ">=570"', 'driver: "~=570"', 5, "runners[0].driver"),
    ("gpus: 2*h100-sxm", "gpus: ²*h100-sxm", 8, "bad count"),
    ("gpus: 2*h100-sxm", "gpus: 99999*h100-sxm", 8, "too many GPUs"),
    ("gpus: 2*h100-sxm", "gpus: []", 8, "runners[1].gpus: expected text"),
    ("name: h100x2", "name: h100 x2", 6, "runners[1].name"),
    ("name: h100x2", 'name: "h100x2\\n"', 6, "runners[1].name"),
    ("name: h100x2", "name: h100x²", 6, "runners[1].name"),
    ("name: h100x2", "name: 12", 6, "runners[1].name"),
    ('driver: ">=570"', 'driver: ">=570"\n    expect: ""', 6, "runners[0].expect: empty"),
    ('driver: ">=570"', 'driver: ">=570"\n    expect: "gpus>=2"', 6, "runners[0].expect: bad"),
    ("placement: every", "placement: every\nexpect: x", 11, "unknown key 'expect'"),
]


@pytest.mark.parametrize(("old", "new", "line", "message"), BAD, ids=[b[1] for b in BAD])
def test_each_bad_field_is_one_error_with_file_and_line(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(GpufitError) as error:
        load_pool(path)
    text = str(error.value)
    assert text.startswith(f"{path}:{line}"), text
    assert message in text, text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "an empty file"),
        ("runners: []\n", "non-empty list"),
        ("runners: pro6000\n", "non-empty list"),
        ("- 1\n", "expected a mapping with 'runners:'"),
        ("runners:\n  - name: a\n    labels: [x]\n", "missing 'gpus'"),
        ("runners:\n  - [1]\n", "runners[0]: expected a mapping"),
        ("runners:\n  - name: a\n   labels: [x]\n", "not valid YAML"),
        ("runners:\n  - name: a\n    name: b\n", "duplicate key 'name'"),
    ],
)
def test_broken_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(GpufitError, match=str(path)) as error:
        load_pool(path)
    assert message in str(error.value)


def test_a_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(GpufitError, match="no such runner-pool file"):
        load_pool(tmp_path / "nope.yaml")


def test_an_unknown_class_name_lists_the_classes(tmp_path: Path) -> None:
    pool = load_pool(write(tmp_path, GOOD))
    with pytest.raises(GpufitError) as error:
        pool.get("h100x3", "GPUFIT_RUNNER")
    text = str(error.value)
    assert "GPUFIT_RUNNER='h100x3'" in text and "pro6000, h100x2" in text
    assert f"{tmp_path / 'gpufit-runners.yaml'}:1: runners: no class 'h100x3'" in text
    assert "did you mean 'h100x2'?" in text


# ---- the JSON Schema -------------------------------------------------------------------------


def test_the_shipped_schema_is_current() -> None:
    assert json_schema.SCHEMA_PATH.read_text("utf-8") == json_schema.render(), (
        "runners.schema.json is stale; run: python -m pytest_gpufit.fleet.json_schema"
    )
    assert json_schema.main(["--check"]) == 0
    assert json_schema.main(["--bogus"]) == 2


def test_the_schema_accepts_the_shipped_pool_and_rejects_what_the_validator_rejects(
    tmp_path: Path,
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = json.loads(json_schema.SCHEMA_PATH.read_text("utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    for text in ((ROOT / "gpufit-runners.yaml").read_text("utf-8"), GOOD):
        assert not list(validator.iter_errors(yaml.safe_load(text)))
    for old, new, _, _ in BAD:
        if "name: pro6000" in new.lower():
            continue  # unique names across entries are beyond JSON Schema
        if "\\n" in new:
            continue  # Python's re (jsonschema's) lets `$` match before a final newline
        data = yaml.safe_load(GOOD.replace(old, new, 1))
        assert list(validator.iter_errors(data)), new


def test_the_shipped_pool_loads() -> None:
    pool = load_pool(ROOT / "gpufit-runners.yaml")
    assert {r.name for r in pool.runners} == {"pro6000", "h100", "cpu"}
    # The GPU classes have cards; the CPU class (issue 22) takes the checks that need no GPU.
    assert [r.name for r in pool.runners if not r.has_gpus] == ["cpu"]
    assert pool.ungated_home.name == "cpu" and pool.orphan_home.name == "pro6000"


# ---- the expect of a class -------------------------------------------------------------------


@pytest.mark.parametrize("card", sorted(catalog()))
def test_the_derived_expect_holds_on_the_class_own_cards(card: str) -> None:
    runner = RunnerClass("c", ("self-hosted",), f"2*{card}", (card, card), ">=570.1")
    expect = derived_expect(runner)
    inventory = class_inventory(runner)
    assert check_expect(parse_expect(expect), inventory) == []
    assert expect.startswith("count>=2,vram>=") and "driver>=570.1" in expect


def test_the_derived_expect_tells_cards_apart() -> None:
    h100 = RunnerClass("h", ("x",), "h100-sxm", ("h100-sxm",))
    pro = RunnerClass("p", ("x",), "rtx-pro-6000-blackwell", ("rtx-pro-6000-blackwell",))
    assert check_expect(parse_expect(derived_expect(pro)), class_inventory(h100))
    assert check_expect(parse_expect(derived_expect(h100)), class_inventory(pro))


def test_a_class_expect_replaces_the_derived_clauses_of_its_keys() -> None:
    runner = RunnerClass(
        "p",
        ("x",),
        "rtx-pro-6000-blackwell",
        ("rtx-pro-6000-blackwell",),
        ">=570",
        expect_override="name~RTX PRO 6000,cc>=12.0,cc<13.0",
    )
    assert derived_expect(runner) == (
        "count>=1,vram>=97GB,name~RTX PRO 6000,cc>=12.0,cc<13.0,driver>=570"
    )


# ---- a CPU class (gpus: none) --------------------------------------------------------------

CPU_CLASS = "  - name: cpu\n    labels: [ubuntu-latest]\n    gpus: none\n"


def test_a_cpu_class_has_no_cards_and_expects_no_gpu(tmp_path: Path) -> None:
    pool = load_pool(write(tmp_path, GOOD.replace("placement", CPU_CLASS + "placement")))
    cpu = pool.get("cpu")
    assert cpu.card_ids == () and not cpu.has_gpus and cpu.line == 10
    assert pool.ungated_home is cpu and pool.orphan_home.name == "pro6000"
    # A class that asks for no GPU: met by any machine, with or without one.
    assert derived_expect(cpu) == "count>=0"
    assert check_expect(parse_expect(derived_expect(cpu)), class_inventory(cpu)) == []
    assert class_inventory(cpu).reason == "a CPU class (gpus: none)"


def test_a_cpu_class_promises_no_driver(tmp_path: Path) -> None:
    text = GOOD.replace("placement", CPU_CLASS + '    driver: ">=570"\nplacement')
    with pytest.raises(GpufitError) as error:
        load_pool(write(tmp_path, text))
    assert str(error.value) == (
        f"{tmp_path / 'gpufit-runners.yaml'}:13: runners[2].driver: a CPU class (gpus: none) "
        "has no NVIDIA driver to promise; drop driver:"
    )


def test_the_schema_takes_gpus_none_and_no_other_word() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema.build_schema()
    good = {"runners": [{"name": "cpu", "labels": ["ubuntu-latest"], "gpus": "none"}]}
    jsonschema.validate(good, schema)
    good["runners"][0]["gpus"] = "nothing"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(good, schema)
