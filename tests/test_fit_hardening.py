"""What users can type into the fit engine's newer knobs (rope scaling, engine logs), and the
figures held against what vLLM itself computes: each test here failed before its fix."""

from __future__ import annotations

import re

import pytest

from pytest_gpufit.cli import main
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.context import parse_rope_scaling


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- rope scaling: numbers users type ---------------------------------------------------------


@pytest.mark.parametrize("spec", ["yarn:1e308:32768", "yarn:1e6:32768", "dynamic:1e300"])
def test_a_huge_factor_is_one_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    code, out, err = run(capsys, "fit", "qwen3-30b-a3b", "--gpu", "h100", "--rope-scaling", spec)
    assert code == 2 and out == ""
    assert "--rope-scaling" in err and "beyond 1,000,000,000" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("original", ["0", "00", "1000000001"])
def test_original_length_must_be_a_length(original: str) -> None:
    with pytest.raises(GpufitError, match=re.escape("original_max_position_embeddings must be")):
        parse_rope_scaling(f"yarn:4:{original}")
