"""The metric table: every metric is one entry, and every reader takes it from there."""

from __future__ import annotations

import json
import math

import pytest

from pytest_gpufit import metrics
from pytest_gpufit.baseline import compare, metric_values, parse_tolerances
from pytest_gpufit.baseline.compare import judge
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.records import Inventory
from pytest_gpufit.report import markdown_summary
from pytest_gpufit.suites.json_schema import build_schema


def _stored(metric: metrics.Metric) -> str:
    """The name a metric is stored under (a level metric: at concurrency 4)."""
    return f"c4_{metric.name}" if metric.per_level else metric.name


def _measured(metric: metrics.Metric, value: float) -> dict[str, float]:
    """What a check records for it: at its source key, or under the level's name."""
    return {_stored(metric) if metric.per_level else metric.key: value}


@pytest.mark.parametrize("metric", metrics.TABLE, ids=lambda m: m.name)
def test_each_entry_is_read_by_compare_tolerances_schema_and_labels(metric: metrics.Metric) -> None:
    """A new entry in TABLE is judged, accepted as a tolerance, listed in the suite schema,
    labelled and formatted, with nothing else to edit."""
    name = _stored(metric)
    assert metric_values(_measured(metric, 100.0)) == {name: 100.0}
    better, worse = (150.0, 50.0) if metric.higher_is_better else (50.0, 150.0)
    (up,) = compare(_measured(metric, 100.0), _measured(metric, better), {}, 0.05)
    (down,) = compare(_measured(metric, 100.0), _measured(metric, worse), {}, 0.05)
    assert (up.verdict, down.verdict) == ("better", "worse")
    assert parse_tolerances({metric.name: "7%"}, "t") == {metric.name: 0.07}
    schema = build_schema()["properties"]["baseline"]["properties"]["tolerance"]["properties"]
    assert metric.name in schema
    assert metric.label in metrics.label(name) and metric.label in down.text()
    assert metric.format(100.0) in down.text(), "compare prints the metric's own format"
    assert metrics.find(name) is metric


def test_names_are_unique_and_the_schema_lists_them_in_table_order() -> None:
    names = [m.name for m in metrics.TABLE]
    assert len(names) == len(set(names))
    schema = build_schema()["properties"]["baseline"]["properties"]["tolerance"]["properties"]
    assert list(schema) == names


def test_level_figures_name_each_figure_by_its_level() -> None:
    figures = {"median_ttft_ms": 12.345678, "p99_itl_ms": 3.0, "request_goodput": 9.0}
    assert metrics.level_figures("r2.5", figures) == {
        "r2.5_ttft_ms_p50": 12.3457,
        "r2.5_itl_ms_p99": 3.0,
    }


@pytest.mark.parametrize("name", ["speed", "c8_kl", "decode_tok_s_p99", "x8_goodput"])
def test_unknown_names_are_no_metric(name: str) -> None:
    assert metrics.find(name) is None
    assert metrics.label(name) == name
    with pytest.raises(GpufitError, match="known: decode_tok_s"):
        parse_tolerances({name: "5%"}, "t")


@pytest.mark.parametrize(
    ("metric", "old", "new", "shown"),
    [
        ("decode_tok_s", 10.95, 32.51, ("10.9", "32.5")),
        ("peak_memory", 8.12e9, 9.03e9, ("8.12 GB", "9.03 GB")),
    ],
)
def test_the_summary_and_the_failure_print_a_metric_one_way(
    metric: str, old: float, new: float, shown: tuple[str, str]
) -> None:
    """Two formatters printed one figure two ways: 10.95 in the failure and the CLI, 10.9 in
    the summary; peak memory as 8,120,000,000 bytes in both."""
    comparison = judge(metric, old, [new], 0.05)
    row = {
        "suite": "s",
        "target": "t",
        "check": "throughput",
        "dtype": "bf16",
        "device": "cpu",
        "metrics": {"baseline": [{**comparison.__dict__, "runs": 1}]},
    }
    summary = markdown_summary(Inventory(), {}, {"s.yaml::t::throughput": row})
    assert f"| {metric} | {shown[0]} | {shown[1]} |" in summary
    assert f"{metrics.label(metric)} {shown[0]} -> {shown[1]} (" in comparison.text()


def test_one_non_finite_walker_finds_and_nulls_nested_values() -> None:
    value = {"levels": {"c1": {"p99": math.inf}}, "golden": [[0.0, -math.inf]], "kl": 1.0}
    assert metrics.non_finite(value) == ["levels.c1.p99 = inf", "golden[0][1] = -inf"]
    cleaned = metrics.nulled(value)
    assert metrics.non_finite(cleaned) == []
    assert cleaned == {"levels": {"c1": {"p99": None}}, "golden": [[0.0, None]], "kl": 1.0}
    json.dumps(cleaned, allow_nan=False)  # strict JSON now
