"""Units, native dtype rules and the catalog."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import catalog, catalog_gpu, parse_setup
from pytest_gpufit.hardware.dtypes import canonical_dtype, native_dtypes
from pytest_gpufit.units import GB, GIB, format_gb, parse_percent, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (80, 80 * GB),
        (0.5, GB // 2),
        ("80GB", 80 * GB),
        ("80 gb", 80 * GB),
        ("79GiB", 79 * GIB),
        ("61440MiB", 61440 * 2**20),
        ("1TB", 10**12),
        ("512", 512 * GB),
        ("1.5TiB", int(1.5 * 2**40)),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "80 parsecs", -1, "", None, True, "GB", float("nan")])
def test_parse_size_rejects_with_accepted_forms(bad: object) -> None:
    with pytest.raises(GpufitError, match="size|unit"):
        parse_size(bad)


@settings(deadline=None)  # a loaded CI machine must not turn a slow example into a failure
@given(st.integers(min_value=0, max_value=10**6))
def test_mib_round_trips(n: int) -> None:
    assert parse_size(f"{n}MiB") == n * 2**20


def test_an_80gb_h100_passes_requires_vram_80() -> None:
    assert catalog_gpu("h100-sxm").memory_total_bytes >= parse_size(80)
    assert catalog_gpu("rtx-4090").memory_total_bytes >= parse_size(24)
    assert format_gb(catalog_gpu("h100-sxm").memory_total_bytes) == "85.5 GB"


def test_parse_percent() -> None:
    assert parse_percent("5%") == 0.05
    for bad in (5, "5", "abc%", "-1%"):
        with pytest.raises(GpufitError, match="percentage"):
            parse_percent(bad)


@pytest.mark.parametrize(
    ("cc", "has", "lacks"),
    [
        ((7, 5), {"fp16", "int8", "int4"}, {"bf16", "tf32", "fp8", "fp4"}),
        ((8, 0), {"bf16", "tf32", "int4"}, {"fp8", "fp4"}),
        ((8, 9), {"fp8", "fp8_e4m3", "fp8_e5m2"}, {"fp4"}),
        ((9, 0), {"fp8", "bf16"}, {"fp4", "int4"}),
        ((10, 0), {"fp4", "nvfp4", "mxfp4"}, {"int4"}),
        ((12, 0), {"fp4", "fp8"}, set()),
        ((7, 0), {"fp16"}, {"int8", "bf16"}),
    ],
)
def test_native_dtype_thresholds(cc: tuple[int, int], has: set[str], lacks: set[str]) -> None:
    native = set(native_dtypes(cc))
    assert has <= native and not (lacks & native)


def test_amd_gfx942() -> None:
    native = set(native_dtypes(None, "gfx942", "amd"))
    assert {"bf16", "fp8", "int8"} <= native and "fp4" not in native and "tf32" not in native


def test_dtype_aliases_and_errors() -> None:
    assert canonical_dtype("bfloat16") == "bf16" and canonical_dtype("E4M3") == "fp8_e4m3"
    with pytest.raises(GpufitError, match="unknown dtype 'fp7'; accepted: fp32"):
        canonical_dtype("fp7")


REQUIRED_IDS = {
    "rtx-4090",
    "rtx-5090",
    "rtx-6000-ada",
    "rtx-pro-6000-blackwell",
    "a100-40gb",
    "a100-80gb",
    "h100-sxm",
    "h100-pcie",
    "h200",
    "b200",
    "l40s",
    "t4",
    "mi300x",
}


def test_catalog_has_every_required_card_with_its_facts() -> None:
    assert set(catalog()) >= REQUIRED_IDS
    for card in catalog():
        gpu = catalog_gpu(card)
        assert gpu.memory_total_bytes > 10 * GB and gpu.memory_bandwidth_bytes_s
        assert gpu.native_dtypes


@pytest.mark.parametrize("card", sorted(REQUIRED_IDS))
def test_catalog_dtypes_agree_with_the_architecture_rules(card: str) -> None:
    gpu = catalog_gpu(card)
    assert gpu.native_dtypes == native_dtypes(gpu.compute_capability, gpu.architecture, gpu.vendor)


def test_catalog_carries_a_source_for_every_number() -> None:
    from importlib import resources

    text = resources.files("pytest_gpufit.hardware").joinpath("catalog.yaml").read_text()
    for line in text.splitlines():
        key = line.strip().split(":")[0]
        if key in ("memory_mib", "bandwidth_gb_s", "compute_capability"):
            assert "#" in line, f"no source comment: {line.strip()}"


def test_parse_setup() -> None:
    assert parse_setup("2*rtx-pro-6000-blackwell") == ["rtx-pro-6000-blackwell"] * 2
    with pytest.raises(GpufitError, match="known ids: rtx-4090"):
        parse_setup("gtx-1080")
    with pytest.raises(GpufitError, match=r"bad count in 'x\*t4'"):
        parse_setup("x*t4")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (10**400, "is too large; sizes stop below 1000 TB"),
        (1e300, "is too large"),
        (float("inf"), "must be a finite size"),
        (float("nan"), "must be a finite size"),
        ("²GB", "expected a number of GB"),
        ("٨٠GB", "expected a number of GB"),
        ("1.2.3GB", "expected a number of GB"),
        ("1000000GB", "is too large"),
        ("1000TiB", "is too large"),
        ("9" * 400 + "B", "is too large"),
    ],
    ids=lambda v: repr(v)[:24],
)
def test_absurd_or_non_ascii_sizes_are_refused(value: object, message: str) -> None:
    with pytest.raises(GpufitError, match=message):
        parse_size(value, "vram")


def test_sizes_people_write_still_parse() -> None:
    assert parse_size("80 gb") == parse_size("80GB") == parse_size(80) == 80 * 10**9
    assert parse_size("999TiB") == 999 * 2**40
    assert parse_size("0000001GB") == 10**9


@pytest.mark.parametrize("value", ["١٠%", "1_0%", "nan%", "inf%", "1e1%", "10001%", "-5%", 10])
def test_odd_percentages_are_refused(value: object) -> None:
    with pytest.raises(GpufitError, match="percentage"):
        parse_percent(value)
