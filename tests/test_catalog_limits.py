"""Simulated setups have a sane size and ASCII counts: ``10**12*h100-sxm`` and ``²*h100-sxm``
are usage errors, not a MemoryError or an INTERNALERROR."""

from __future__ import annotations

import pytest

from pytest_gpufit.cli import main
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import MAX_SIMULATED_GPUS, parse_setup

TOO_MANY = "at most 1024 GPUs in a simulated setup"


def test_up_to_1024_simulated_gpus() -> None:
    assert MAX_SIMULATED_GPUS == 1024
    assert len(parse_setup("1024*t4")) == 1024
    assert len(parse_setup("1000*t4,24*h100-sxm")) == 1024


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("1025*t4", f"too many GPUs in '1025*t4'; {TOO_MANY}"),
        ("1000000000000*h100-sxm", f"too many GPUs in '1000000000000*h100-sxm'; {TOO_MANY}"),
        ("9" * 5000 + "*t4", f"too many GPUs in '{'9' * 37}...'; {TOO_MANY}"),
        ("1000*t4,25*t4", f"1025 GPUs in all; {TOO_MANY}"),
        ("²*h100-sxm", "bad count in '²*h100-sxm'; write ID or N*ID"),
        ("٣*t4", "bad count in '٣*t4'"),  # an Arabic-Indic three
        ("10^12*h100-sxm", "bad count in '10^12*h100-sxm'"),
        ("0*t4", "bad count in '0*t4'"),
    ],
)
def test_counts_beyond_the_cap_or_not_ascii_are_refused(setup: str, message: str) -> None:
    with pytest.raises(GpufitError) as error:
        parse_setup(setup)
    assert str(error.value).startswith("--gpufit-simulate: ") and message in str(error.value)


@pytest.mark.parametrize("setup", ["1000000000000*h100-sxm", "²*h100-sxm"])
@pytest.mark.parametrize("source", ["option", "environment"])
def test_plugin_usage_error_not_internal_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, setup: str, source: str
) -> None:
    pytester.makepyfile("def test_a(): pass")
    if source == "option":
        result = pytester.runpytest(f"--gpufit-simulate={setup}")
    else:
        monkeypatch.setenv("GPUFIT_SIMULATE", setup)
        result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *{setup[:6]}*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("1000000000000*h100-sxm", TOO_MANY),
        ("²*h100-sxm", "bad count in '²*h100-sxm'"),
        ("h200,2000*h200", TOO_MANY),
    ],
)
def test_gpufit_table_gpus(capsys: pytest.CaptureFixture[str], setup: str, message: str) -> None:
    assert main(["table", "qwen3-0.6b", "--gpus", setup]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpufit: error: --gpu") and message in err
    assert len(err.strip().splitlines()) == 1
