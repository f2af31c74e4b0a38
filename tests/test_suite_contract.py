"""The suite contract is written once: schema.json is generated from the validator's tables,
and the two agree on what they accept; bad numbers are collection errors (issue 10, #7)."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.markers import requirement_from_yaml
from pytest_gpufit.suites import json_schema
from pytest_gpufit.suites.kinds import KINDS
from pytest_gpufit.suites.schema import TARGET_KINDS
from pytest_gpufit.units import parse_percent

SCHEMA = json_schema.build_schema()
TARGET = SCHEMA["properties"]["targets"]["items"]["properties"]
REQUIRES = SCHEMA["properties"]["requires"]["properties"]
TOLERANCE = SCHEMA["properties"]["baseline"]["properties"]["tolerance"]["properties"]


def test_shipped_schema_is_the_generated_one() -> None:
    assert json_schema.SCHEMA_PATH.read_text("utf-8") == json_schema.render(), (
        "schema.json is stale; run: python -m pytest_gpufit.suites.json_schema"
    )
    assert json_schema.main(["--check"]) == 0


@pytest.fixture(scope="module")
def jsonschema() -> ModuleType:
    return pytest.importorskip("jsonschema")  # the dev extra: only the tests that validate


def test_the_schema_is_a_draft_2020_12_schema(jsonschema: ModuleType) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def _check_schema(kind: str, key: str) -> dict[str, Any]:
    body: dict[str, Any] = TARGET["checks"]["properties"][kind]["oneOf"][1]
    return body["properties"][key]  # type: ignore[no-any-return]


def _validator_accepts(parse: Any, value: Any) -> bool:
    try:
        parse(value)
    except GpufitError:
        return False
    return True


# field -> (validator, JSON Schema of the field)
FIELDS: dict[str, tuple[Any, dict[str, Any]]] = {
    "requires.vram": (lambda v: requirement_from_yaml("vram", v), REQUIRES["vram"]),
    "requires.count": (lambda v: requirement_from_yaml("count", v), REQUIRES["count"]),
    "loads.max_peak_memory": (
        KINDS["loads"].fields["max_peak_memory"],
        _check_schema("loads", "max_peak_memory"),
    ),
    "loads.max_seconds": (
        KINDS["loads"].fields["max_seconds"],
        _check_schema("loads", "max_seconds"),
    ),
    "loads.within_estimate": (
        KINDS["loads"].fields["within_estimate"],
        _check_schema("loads", "within_estimate"),
    ),
    "throughput.min_decode_tok_s": (
        KINDS["throughput"].fields["min_decode_tok_s"],
        _check_schema("throughput", "min_decode_tok_s"),
    ),
    "throughput.repeats": (
        KINDS["throughput"].fields["repeats"],
        _check_schema("throughput", "repeats"),
    ),
    "throughput.warmup": (
        KINDS["throughput"].fields["warmup"],
        _check_schema("throughput", "warmup"),
    ),
    "precision.min_top1_agreement": (
        KINDS["precision"].fields["min_top1_agreement"],
        _check_schema("precision", "min_top1_agreement"),
    ),
    "generates.expect_tokens": (
        KINDS["generates"].fields["expect_tokens"],
        _check_schema("generates", "expect_tokens"),
    ),
    "target.device": (TARGET_KINDS["device"], TARGET["device"]),
    "target.seed": (TARGET_KINDS["seed"], TARGET["seed"]),
    "baseline.tolerance": (lambda v: parse_percent(v), TOLERANCE["decode_tok_s"]),
}

VALUES: list[Any] = [
    "80 gb",
    "1.2.3GB",
    "80GB",
    "79GiB",
    "61440MiB",
    "1TB",
    "1 tb",
    "80",
    "80.5",
    ".5",
    "0",
    "²GB",
    "8²",
    "80 parsecs",
    "",
    " ",
    "80GB ",
    "999999GB",
    "1000000GB",
    "999TiB",
    "1000TiB",
    "0000001GB",
    "1e9",
    "1e-12",
    "1.5e99",
    "1e400",
    "nan",
    "inf",
    "-5",
    "5s",
    "90 s",
    "0s",
    "10%",
    "10",
    "9999%",
    "10000%",
    "10000.0%",
    "10000.5%",
    "10001%",
    "-5%",
    "5 %",
    ".5%",
    "1_0%",
    "١٠%",
    "cuda",
    "cuda:0",
    "cuda:²",
    "cpu",
    "gpu",
    0,
    1,
    2,
    -1,
    5.0,
    0.5,
    1.5,
    10**400,
    10**100,
    10**6,
    999_999,
    1e99,
    1e100,
    math.inf,
    -math.inf,
    1000,
    1001,
    2**32,
    True,
    False,
    None,
    [],
    [1, 2],
    [1.0],
    [-1],
    ["a"],
    {},
    80.0,
]


@pytest.mark.parametrize("field", FIELDS)
def test_validator_and_schema_agree(field: str, jsonschema: ModuleType) -> None:
    parse, schema = FIELDS[field]
    validator = jsonschema.Draft202012Validator(schema)
    disagree = [
        (value, _validator_accepts(parse, value))
        for value in VALUES
        if _validator_accepts(parse, value) != validator.is_valid(value)
    ]
    assert not disagree, f"{field}: (value, validator accepts) where schema.json differs"


@pytest.mark.parametrize("field", FIELDS)
@settings(max_examples=150)
@given(
    value=st.one_of(
        st.text(alphabet="0123456789.eE+- gGbBiImMtTkKs%²:cpuda", max_size=12),
        st.integers(min_value=-(10**120), max_value=10**120),
        # NaN is left out: JSON has none, and a JSON Schema cannot reject it (every comparison
        # with NaN is false); the validator rejects it, as test_nan_* below show.
        st.floats(allow_nan=False),
    )
)
def test_validator_and_schema_agree_on_random_values(
    field: str, value: Any, jsonschema: ModuleType
) -> None:
    parse, schema = FIELDS[field]
    assert _validator_accepts(parse, value) == jsonschema.Draft202012Validator(schema).is_valid(
        value
    ), value


# ---- bad numbers in a suite are collection errors naming file, line and field ----------------

TARGET_TEXT = """suite: s
targets:
  - name: t
    model: qwen3-0.6b
    weights: random
    checks:
"""
BAD = {
    "huge_vram": (
        "suite: s\nrequires: {vram: " + "9" * 400 + "}\n" + TARGET_TEXT[9:] + "      fits: {}\n",
        "huge_vram.gpufit.yaml:2: requires.vram: requires_vram: 999",
    ),
    "nan_threshold": (
        TARGET_TEXT + "      throughput: {min_decode_tok_s: .nan}\n",
        "nan_threshold.gpufit.yaml:7: targets[0].checks.throughput.min_decode_tok_s: "
        "expected a finite number, got nan",
    ),
    "inf_threshold": (
        TARGET_TEXT + "      precision: {max_kl: .inf}\n",
        "inf_threshold.gpufit.yaml:7: targets[0].checks.precision.max_kl: expected a finite",
    ),
    "nan_text": (
        TARGET_TEXT + "      throughput: {max_ttft_ms: nan}\n",
        "nan_text.gpufit.yaml:7: targets[0].checks.throughput.max_ttft_ms: expected a number > 0",
    ),
    "repeats": (
        TARGET_TEXT + "      throughput: {repeats: 1000000000000}\n",
        "repeats.gpufit.yaml:7: targets[0].checks.throughput.repeats: expected at most 1,000 runs",
    ),
    "warmup": (
        TARGET_TEXT + "      throughput: {warmup: 1000000000000}\n",
        "warmup.gpufit.yaml:7: targets[0].checks.throughput.warmup: expected at most 1,000 runs",
    ),
    "huge_int": (
        TARGET_TEXT + "      throughput: {min_prefill_tok_s: " + "9" * 400 + "}\n",
        "huge_int.gpufit.yaml:7: targets[0].checks.throughput.min_prefill_tok_s: expected a "
        "number below 1e100",
    ),
    "nan_fraction": (
        TARGET_TEXT + "      precision: {min_top1_agreement: .nan}\n",
        "nan_fraction.gpufit.yaml:7: targets[0].checks.precision.min_top1_agreement: expected a "
        "finite number, got nan",
    ),
    "unicode_device": (
        TARGET_TEXT.replace("weights: random", "weights: random\n    device: cuda:²")
        + "      fits: {}\n",
        "unicode_device.gpufit.yaml:6: targets[0].device: expected cuda, cuda:N or cpu",
    ),
    "unicode_cc": (
        "suite: s\nrequires: {compute_capability: '²'}\n" + TARGET_TEXT[9:] + "      fits: {}\n",
        "unicode_cc.gpufit.yaml:2: requires.compute_capability: requires_compute_capability: "
        "expected a compute capability",
    ),
    "huge_yaml_int": (
        TARGET_TEXT.replace("weights: random", "weights: random\n    context: " + "1" * 5000)
        + "      fits: {}\n",
        "huge_yaml_int.gpufit.yaml:6: a whole number of 5,000 digits, more than Python reads",
    ),
    "huge_percent": (
        "suite: s\nbaseline: {tolerance: {decode_tok_s: 1000000%}}\n"
        + TARGET_TEXT[9:]
        + "      fits: {}\n",
        "huge_percent.gpufit.yaml:2: baseline.tolerance: baseline.tolerance.decode_tok_s: "
        "expected a percentage up to 10000%",
    ),
}


def test_bad_numbers_in_suites_are_collection_errors(pytester: pytest.Pytester) -> None:
    for name, (text, _) in BAD.items():
        pytester.makefile(".gpufit.yaml", **{name: text})
    result = pytester.runpytest()
    result.assert_outcomes(errors=len(BAD))
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection errors stop the session
    out = result.stdout.str()
    for name, (_, message) in BAD.items():
        assert message in out, (name, out)
    assert "Traceback" not in out and "INTERNALERROR" not in out and 'File "' not in out


def test_the_json_schema_rejects_the_same_suites(jsonschema: ModuleType) -> None:
    import yaml

    for name, (text, _) in BAD.items():
        if name == "huge_yaml_int":
            continue  # no YAML reader makes it a number (PyYAML raises): nothing to validate
        data = yaml.safe_load(text)
        if name in ("nan_threshold", "nan_fraction"):
            continue  # NaN: see test_validator_and_schema_agree_on_random_values
        assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(data), name


# ---- whole suites: what the validator accepts, schema.json accepts; nothing crashes ---------

# Values per key, good and bad, so generated suites reach every branch of the validator.
_TARGET_VALUES: dict[str, list[Any]] = {
    "name": ["a", "b", "", 5, None],
    "model": ["qwen3-0.6b", "no-such-model", "", 1],
    "weights": ["random", "checkpoint", "lazy"],
    "backend": ["openai", "transformers", "vllm"],
    "endpoint": ["http://127.0.0.1:8000/v1", "http://127.0.0.1:{port}/v1", "ftp://x", 8000],
    "served_model": ["m", "", ["m"]],
    "api_key_env": ["OPENAI_API_KEY", "sk-123", "1X"],
    "device": ["cpu", "cuda", "cuda:1", "gpu", "cuda:²"],
    "context": [1024, 0, 10**8, "4k"],
    "seed": [0, -1, 2**40, True],
    "trust_remote_code": [True, "yes"],
    "requires": [
        {"count": 2},
        {"p2p": True, "topology": "PIX"},
        {"vram": "10GB"},
        {"vram": "10 parsecs"},
        {"name": None},
        {"dtype": ["bf16", "fp8"]},
        [],
        None,
    ],
    "launch": [
        {"command": ["srv", "{port}"]},
        {"command": ["srv"]},
        {"command": "srv --port {port}"},
        {"command": []},
        {"command": ["srv", "{port}"], "env": {"A": 1}, "log_forbid": "x"},
        {"command": ["srv", "{port}"], "env": {"1A": "x"}},
        {"command": ["srv", "{port}"], "wait": 3},
        {},
    ],
    "baseline": [{"missing": "warn"}, {"tolerance": {"decode_tok_s": "5%"}}, {"missing": "?"}],
}
_CHECK_BODIES: dict[str, list[Any]] = {
    "fits": [None, {}, {"x": 1}],
    "serves": [None, {}],
    "loads": [{}, {"max_seconds": 5}, {"max_peak_memory": "1GB"}, {"within_estimate": "10%"}],
    "generates": [
        {},
        {"prompt": "hi"},
        {"prompt_tokens": 4},
        {"prompt": "hi", "prompt_tokens": 4},
        {"expect_tokens": [1]},
        {"max_new_tokens": 0},
    ],
    "throughput": [{}, {"batch": 2}, {"batch": 1}, {"new_tokens": 4}, {"repeats": 0}],
    "load": [{}, {"concurrency": [1, 8]}, {"rate": [1]}, {"slo": {"ttft_ms_p99": 5}}],
    "precision": [{}, {"reference": "golden"}, {"reference": "fp32"}, {"max_kl": 0.1}],
    "bogus": [{}],
}


_USUALLY = {"name": "a", "model": "qwen3-0.6b", "weights": "random", "device": "cpu"}


@st.composite
def _targets(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 20)) == 0:
        return draw(st.sampled_from([None, "t", [], 5]))  # not a mapping at all
    target: dict[str, Any] = {}
    for key, values in _TARGET_VALUES.items():
        if key in _USUALLY and draw(st.integers(0, 4)) > 0:
            target[key] = _USUALLY[key]  # mostly valid: later rules are reached too
        elif draw(st.integers(0, 3)) == 0:
            target[key] = draw(st.sampled_from(values))
    kinds = draw(st.lists(st.sampled_from(sorted(_CHECK_BODIES)), max_size=3, unique=True))
    if draw(st.integers(0, 15)) > 0:
        target["checks"] = {k: draw(st.sampled_from(_CHECK_BODIES[k])) for k in kinds}
    return target


@settings(max_examples=300, deadline=None)
@given(targets=st.lists(_targets(), min_size=0, max_size=2), top=st.booleans())
@example(targets=[{**_USUALLY, "checks": {"fits": None}}], top=False)
@example(targets=[{**_USUALLY, "requires": {"name": None}, "checks": {"fits": {}}}], top=False)
def test_every_suite_the_validator_accepts_the_schema_accepts(
    targets: list[Any], top: bool, jsonschema: ModuleType
) -> None:
    """Whole generated suites, written as YAML: the validator raises GpufitError or accepts
    (no traceback: ``fits:`` with no value crashed collection with an AttributeError), and
    what it accepts schema.json accepts. The schema is looser where JSON Schema cannot say
    the rule (a model folder on disk, unique target names) or does not yet (which checks a
    backend can measure, ``{port}`` only with ``launch:``): an editor passes those, and
    collection names them."""
    import tempfile

    import yaml

    from pytest_gpufit.suites.schema import parse_suite

    document: dict[str, Any] = {"suite": "s", "targets": targets}
    if top:
        document["requires"] = {"count": 1}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.gpufit.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            parse_suite(path)
        except GpufitError:
            return
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid(document), document
