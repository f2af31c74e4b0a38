"""Every bad suite file gets one clear collection error naming the file, line and field."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from pytest_gpufit.suites.kinds import KINDS
from pytest_gpufit.suites.schema import REQUIRES_FIELDS, SUITE_FIELDS, TARGET_FIELDS

ROOT = Path(__file__).parent.parent
TARGET = """suite: s
targets:
  - name: t
    model: qwen3-0.6b
    weights: random
    checks:
      fits: {}
"""

CASES = {
    "not_yaml": ("suite: [unclosed\n", "bad.gpufit.yaml:1:17: not valid YAML"),
    "not_mapping": ("- a\n- b\n", "bad.gpufit.yaml:1: a suite file must be a YAML mapping"),
    "empty": ("", "bad.gpufit.yaml:1: empty suite file"),
    "missing_suite": ("targets: []\n", "bad.gpufit.yaml:1: suite: missing required key"),
    "missing_targets": ("suite: s\n", "bad.gpufit.yaml:1: targets: missing required key"),
    "unknown_key": (
        TARGET.replace("weights:", "wieghts:"),
        "bad.gpufit.yaml:5: targets[0].wieghts: unknown key; did you mean 'weights'?",
    ),
    "unknown_check": (
        TARGET.replace("fits:", "thruput:"),
        "bad.gpufit.yaml:7: targets[0].checks.thruput: unknown key; did you mean 'throughput'?",
    ),
    "wrong_type": (
        TARGET.replace("fits: {}", "throughput: {repeats: many}"),
        "bad.gpufit.yaml:7: targets[0].checks.throughput.repeats: expected a whole "
        "number from 1 to 1,000 runs, got 'many'",
    ),
    "bad_unit": (
        TARGET.replace("fits: {}", "loads: {max_peak_memory: 70 parsecs}"),
        "bad.gpufit.yaml:7: targets[0].checks.loads.max_peak_memory: size: unknown unit 'parsecs'",
    ),
    "bad_percent": (
        TARGET.replace("fits: {}", "loads: {within_estimate: 10}"),
        "targets[0].checks.loads.within_estimate: percentage: expected a percentage "
        "such as '10%', got 10",
    ),
    "bad_requires": (
        TARGET.replace("suite: s\n", "suite: s\nrequires: {vram: lots}\n"),
        "bad.gpufit.yaml:2: requires.vram: requires_vram: expected a number of GB",
    ),
    "duplicate_target": (
        TARGET + "  - name: t\n    model: qwen3-0.6b\n    weights: random\n"
        "    checks: {fits: {}}\n",
        "bad.gpufit.yaml:8: targets[1].name: duplicate target name 't' (first at line 3)",
    ),
    "duplicate_key": (
        TARGET.replace("    weights: random\n", "    weights: random\n    weights: checkpoint\n"),
        "bad.gpufit.yaml:6: duplicate key 'weights'",
    ),
    "missing_model": (
        TARGET.replace("qwen3-0.6b", "models/nowhere"),
        "bad.gpufit.yaml:4: targets[0].model: model 'models/nowhere': no such file or folder",
    ),
    "checkpoint_without_weights": (
        TARGET.replace("weights: random", "weights: checkpoint"),
        "targets[0].model: weights: checkpoint needs a folder with *.safetensors files",
    ),
    "text_prompt_without_tokenizer": (
        TARGET.replace("fits: {}", 'generates: {prompt: "hello"}'),
        "bad.gpufit.yaml:7: targets[0].checks.generates.prompt: a text prompt needs a tokenizer",
    ),
    "bad_device": (
        TARGET.replace("weights: random", "weights: random\n    device: tpu"),
        "targets[0].device: expected cuda, cuda:N or cpu, got 'tpu'",
    ),
    "no_checks": (
        TARGET.replace("      fits: {}\n", "").replace("checks:", "checks: {}"),
        "targets[0].checks: name at least one check",
    ),
    "bad_dtype": (
        TARGET.replace("weights: random", "weights: random\n    dtype: fp7"),
        "targets[0].dtype: expected one of fp32, bf16, fp16, got 'fp7'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_suite_is_one_clear_collection_error(pytester: pytest.Pytester, case: str) -> None:
    text, message = CASES[case]
    pytester.makefile(".gpufit.yaml", bad=text)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert message in out, out
    assert "Traceback" not in out and 'File "' not in out


def test_trust_remote_code_needed_but_not_set(pytester: pytest.Pytester) -> None:
    pytest.importorskip("transformers")
    folder = pytester.mkdir("custom")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "my_secret_arch",
                "auto_map": {
                    "AutoConfig": "configuration_x.XConfig",
                    "AutoModelForCausalLM": "modeling_x.X",
                },
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 128,
                "vocab_size": 100,
            }
        )
    )
    pytester.makefile(
        ".gpufit.yaml",
        custom="""
suite: s
targets:
  - name: t
    model: custom
    weights: random
    device: cpu
    checks: {loads: {}}
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*needs the custom code in its folder; set trust_remote_code: "
            "true on the target (only for code you trust)*"
        ]
    )


def test_json_schema_matches_the_validator_and_the_shipped_suites() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(resources.files("pytest_gpufit.suites").joinpath("schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]) == set(SUITE_FIELDS)
    target = schema["properties"]["targets"]["items"]
    assert set(target["properties"]) == set(TARGET_FIELDS)
    assert set(target["properties"]["requires"]["properties"]) == set(REQUIRES_FIELDS)
    checks = target["properties"]["checks"]["properties"]
    assert set(checks) == set(KINDS)
    for kind, spec in checks.items():
        assert set(spec["oneOf"][1]["properties"]) == set(KINDS[kind].fields)
    for suite in (ROOT / "suites").glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(suite.read_text()), schema)
        assert "yaml-language-server: $schema=" in suite.read_text().splitlines()[0]


def test_shipped_suites_collect(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(str(ROOT / "suites"), "--collect-only", "-q")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*qwen3-30b-a3b-bf16.yaml::qwen3-30b-a3b::throughput"])


def test_a_context_beyond_the_models_maximum_fails_the_check(pytester: pytest.Pytester) -> None:
    """A fits verdict at 100k tokens for a 40,960-token model is a green nobody earned (on a
    machine with enough memory it would pass, with a warning no one reads)."""
    pytester.makefile(
        ".gpufit.yaml",
        s=TARGET.replace("    checks:", "    device: cpu\n    context: 100000\n    checks:"),
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*context 100,000 is beyond Qwen3-0.6B's maximum of 40,960 tokens*"]
    )


ANCHORED = """suite: anchors
targets:
  - &base
    name: first
    model: qwen3-0.6b
    weights: random
    device: cpu
    checks: {{fits: {{}}}}
  - <<: *base
    name: second
    weights: {weights}
"""


def test_a_key_of_its_own_overrides_a_merged_one(pytester: pytest.Pytester) -> None:
    """YAML's merge key: the mapping's own keys win over those merged in with <<: *anchor.
    Overriding name: of an anchored target was 'duplicate key 'name''; a key written twice
    in one mapping still is, and a merged value's error names the line it was written on."""
    pytester.makefile(".gpufit.yaml", s=ANCHORED.format(weights="random"))
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["s.gpufit.yaml::first::fits", "s.gpufit.yaml::second::fits"])
    pytester.makefile(".gpufit.yaml", s=ANCHORED.format(weights="lazy"))
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*s.gpufit.yaml:11: targets[[]1].weights: expected one of*"])
    twice = ANCHORED.format(weights="random") + "    name: third\n"
    pytester.makefile(".gpufit.yaml", s=twice)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*s.gpufit.yaml:12: duplicate key 'name'*"])
    pytester.makefile(
        ".gpufit.yaml",
        s=ANCHORED.format(weights="random").replace(
            "    weights: random\n    device", "    weights: lazy\n    device"
        ),
    )
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*s.gpufit.yaml:6: targets[[]0].weights: expected one of*"])
