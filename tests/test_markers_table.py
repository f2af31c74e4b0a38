"""The marker table is the one source: decorators, registration, YAML keys and schema follow it.

Also the ways a marker could ungate a test or crash a session (issue 10, items 7 and 8).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

import pytest_gpufit
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.markers import (
    ARGUMENTS,
    SPECS,
    YAML_KEYS,
    MarkerSpec,
    Param,
    YamlKey,
    make_decorator,
    marker_lines,
    positive_int,
    requirement_from_marker,
    requires_json_schema,
    yaml_keys,
)
from pytest_gpufit.requirements import Requirement
from pytest_gpufit.suites.json_schema import SCHEMA_PATH
from pytest_gpufit.suites.schema import REQUIRES_FIELDS

ROOT = Path(__file__).parent.parent


def _clean(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in text and "Traceback" not in text, text


# ---- one table, every surface ---------------------------------------------------------------


def test_every_surface_lists_the_table(pytester: pytest.Pytester) -> None:
    names = [spec.name for spec in SPECS]
    assert sorted(set(pytest_gpufit.__all__) - {"GpufitError"}) == sorted(names)
    for spec in SPECS:
        decorator = getattr(pytest_gpufit, spec.name)
        assert inspect.signature(decorator) == spec.signature
    # The names type checkers see (TYPE_CHECKING block) are the table's.
    source = Path(pytest_gpufit.__file__).read_text()
    assert sorted(re.findall(r"^    (requires_\w+): Callable", source, re.M)) == sorted(names)
    assert tuple(YAML_KEYS) == REQUIRES_FIELDS
    shipped = json.loads(SCHEMA_PATH.read_text())
    assert shipped["properties"]["requires"]["properties"].keys() == YAML_KEYS.keys()
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines_random([f"@pytest.mark.{spec.usage}: *" for spec in SPECS])


def test_each_spec_maps_onto_requirement_fields() -> None:
    fields = {f.name for f in dataclasses.fields(Requirement)}
    for spec in SPECS:
        if spec.build is None:
            assert set(spec.fields) == {p.name for p in spec.params}, spec.name
            assert set(spec.fields.values()) <= fields, spec.name
        for key in spec.yaml:  # ARGUMENTS: the value is a mapping of the marker's arguments
            assert key.param in {p.name for p in spec.params} | {ARGUMENTS}, (spec.name, key)


def test_public_signatures_are_unchanged() -> None:
    shown = {spec.name: str(inspect.signature(getattr(pytest_gpufit, spec.name))) for spec in SPECS}
    assert shown["requires_gpu"].startswith("(count: 'int' = 1, name: 'str | None' = None)")
    assert shown["requires_vram"].startswith("(size: 'int | float | str', free: 'bool' = False)")
    assert shown["requires_dtype"].startswith("(*dtypes: 'str')")
    assert shown["requires_fit"].startswith(
        "(model: 'str', dtype: 'str' = 'bf16', context: 'int | None' = None, "
        "batch: 'int' = 1, instances: 'int' = 1, gpus: 'int' = 1, engine: 'str | None' = None)"
    )


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnknownMarkWarning"
)  # requires_ram is unregistered
def test_a_spec_added_or_removed_changes_every_generated_surface() -> None:
    ram = MarkerSpec(
        "requires_ram",
        (Param("size", positive_int, "int", schema={"type": "integer"}),),
        "host memory",
        fields={"size": "count"},
        yaml=(YamlKey("ram", "size"),),
    )
    more = (*SPECS, ram)
    assert any(line.startswith("requires_ram(size): host memory") for line in marker_lines(more))
    assert "ram" in requires_json_schema(more)["properties"]
    assert "ram" in yaml_keys(more)
    decorator = make_decorator(ram)
    assert decorator(3).mark.args == (3,) and decorator.__name__ == "requires_ram"
    with pytest.raises(GpufitError, match="requires_ram: expected a whole number"):
        decorator(0)

    fewer = tuple(spec for spec in SPECS if spec.name != "requires_vram")
    assert not any("requires_vram" in line for line in marker_lines(fewer))
    assert {"vram", "free_vram"}.isdisjoint(requires_json_schema(fewer)["properties"])
    assert {"vram", "free_vram"}.isdisjoint(yaml_keys(fewer))


# ---- a typo must not ungate a test (issue 10, #8) -------------------------------------------

TYPOS = {
    "require_vram(60)": "requires_vram",
    "requires_vrams(60)": "requires_vram",
    "requires_gpus(2)": "requires_gpu",
    "requries_fit('qwen3-0.6b')": "requires_fit",
    "Requires_VRAM(60)": "requires_vram",
    "requires_dtypes('fp8')": "requires_dtype",
    "req_vram(60)": "requires_vram",
}


def test_a_misspelled_gpufit_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    body = "import pytest\n" + "".join(
        f"\n@pytest.mark.{mark}\ndef test_{i}(): pass\n" for i, mark in enumerate(TYPOS)
    )
    pytester.makepyfile(test_typos=body)
    # No --strict-markers, and the fail policy: without the check these tests would pass.
    result = pytester.runpytest("--gpufit-on-missing=fail")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    for i, (mark, hint) in enumerate(TYPOS.items()):
        name = mark.split("(")[0]
        result.stderr.fnmatch_lines(
            [f"*test_typos.py::test_{i}: @{name}: not a gpufit marker; did you mean {hint}?*"]
        )
    _clean(result)


def test_other_marks_are_left_alone(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        markers =
            gpu: mine
            slow: mine
            requires_cpu: a project's own mark that looks like requires_gpu
    """)
    pytester.makepyfile("""
        import warnings
        import pytest

        @pytest.fixture
        def f(): return 1

        @pytest.mark.gpu
        @pytest.mark.slow
        @pytest.mark.requires_cpu
        @pytest.mark.usefixtures("f")
        @pytest.mark.filterwarnings("ignore")
        @pytest.mark.parametrize("x", [1, 2])
        def test_a(x): pass

        @pytest.mark.skip(reason="no")
        def test_b(): pass

        @pytest.mark.xfail(reason="no")
        def test_c(): assert False

        @pytest.mark.requires_network
        @pytest.mark.timeout(5)
        def test_d(): pass
    """)
    result = pytester.runpytest("--gpufit-on-missing=fail", "-W", "ignore")
    result.assert_outcomes(passed=3, skipped=1, xfailed=1)


# ---- requires_fit arguments are checked at collection ---------------------------------------


def test_requires_fit_arguments_are_checked_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fit="""
        import pytest

        @pytest.mark.requires_fit("no/such/model")
        def test_missing(): pass

        @pytest.mark.requires_fit("qwen3-0.6b", dtype="fp7")
        def test_dtype(): pass

        @pytest.mark.requires_vram(40, free="False")
        def test_free(): pass

        @pytest.mark.requires_fit("qwen3-0.6b", dtype="fp8", context=4096)
        def test_good(): pass
    """
    )
    result = pytester.runpytest("--gpufit-simulate=h100-sxm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines_random(
        [
            "*test_fit.py::test_missing: @requires_fit: model 'no/such/model': no such file*",
            "*test_fit.py::test_dtype: @requires_fit dtype: unknown precision 'fp7'; accepted:*",
            "*test_fit.py::test_free: @requires_vram free: expected True or False, got 'False'",
        ]
    )
    assert "test_good" not in result.stderr.str()
    _clean(result)


def test_requires_fit_model_relative_to_the_test_file(pytester: pytest.Pytester) -> None:
    sub = pytester.mkdir("sub")
    (sub / "m").mkdir()
    (sub / "m" / "config.json").write_text("{}")  # collection only checks that it exists
    (sub / "test_rel.py").write_text(
        "import pytest\n\n@pytest.mark.requires_fit('m')\ndef test_t(): pass\n"
    )
    result = pytester.runpytest("--collect-only", "-q")
    assert "no such file" not in result.stderr.str()
    assert result.ret == pytest.ExitCode.OK


def test_decorators_check_requires_fit_dtype_and_free_at_import() -> None:
    with pytest.raises(GpufitError, match="requires_fit dtype: unknown precision 'fp7'"):
        pytest_gpufit.requires_fit("qwen3-0.6b", dtype="fp7")
    with pytest.raises(GpufitError, match="requires_vram free: expected True or False"):
        pytest_gpufit.requires_vram(40, free="False")
    assert pytest_gpufit.requires_vram(40, free=True).mark.kwargs == {"free": True}


# ---- bad numbers are usage errors, never INTERNALERROR (issue 10, #7) -----------------------


def test_absurd_and_unicode_marker_values_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_num="""
        import pytest

        @pytest.mark.requires_vram(10**400)
        def test_huge(): pass

        @pytest.mark.requires_vram(float("nan"))
        def test_nan(): pass

        @pytest.mark.requires_vram("2000000GB")
        def test_typo(): pass

        @pytest.mark.requires_compute_capability("²")
        def test_cc(): pass

        @pytest.mark.requires_cuda("²")
        def test_cuda(): pass

        @pytest.mark.requires_fit("qwen3-0.6b", context=10**400)
        def test_context(): pass

        @pytest.mark.requires_fit("qwen3-0.6b", instances=10**6)
        def test_instances(): pass
    """
    )
    result = pytester.runpytest("--gpufit-simulate=h100-sxm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines_random(
        [
            "*::test_huge: @requires_vram: 1000000000000* GB is too large; sizes stop below "
            "1000 TB*",
            "*::test_nan: @requires_vram: must be a finite size, got nan",
            "*::test_typo: @requires_vram: '2000000GB' is too large*",
            "*::test_cc: @requires_compute_capability: expected a compute capability such as*",
            "*::test_cuda: @requires_cuda: expected a version such as*",
            "*::test_context: @requires_fit context: expected at most 100,000,000, got "
            "100000000000000000000... (401 digits)",
            "*::test_instances: @requires_fit instances: expected at most 1,024, got 1000000",
        ]
    )
    _clean(result)


def test_huge_size_in_a_decorator_points_at_the_users_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        from pytest_gpufit import requires_vram

        @requires_vram(10**400)
        def test_x():
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*:3: in <module>", "E   *GpufitError: requires_vram: *too large*"]
    )
    result.stdout.no_fnmatch_line("*pytest_gpufit/markers.py*")
    result.stdout.no_fnmatch_line("*OverflowError*")


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ("count>=²", "--gpufit-expect: bad value in 'count>=²': a whole number of GPUs*"),
        ("cc>=²", "--gpufit-expect: bad value in 'cc>=²': expected a compute capability*"),
        ("vram>=1e400GB", "--gpufit-expect: bad value in 'vram>=1e400GB': *"),
    ],
)
def test_unicode_digits_in_expect_are_usage_errors(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, expect: str, message: str
) -> None:
    monkeypatch.delenv("GPUFIT_EXPECT", raising=False)
    pytester.makepyfile("def test_x(): pass\n")
    result = pytester.runpytest(f"--gpufit-expect={expect}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])
    _clean(result)


def test_marker_parsing_accepts_what_it_did() -> None:
    assert requirement_from_marker("requires_compute_capability", (12,)).compute_capability == (
        12,
        0,
    )
    assert requirement_from_marker("requires_vram", ("80 gb",)).vram_bytes == 80 * 10**9
    assert requirement_from_marker("requires_gpu", (), {"count": 2.0}).count == 2
