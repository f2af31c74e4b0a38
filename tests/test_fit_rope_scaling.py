"""Contexts beyond the trained length (issue 21.3): rope scaling given as the engines take it
extends the maximum the way vLLM derives it, and the plan runs at that context."""

from __future__ import annotations

import json
import re

import pytest

from pytest_gpufit.cli import main
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.context import (
    RopeScaling,
    parse_rope_scaling,
    scaled_maximum,
    with_rope_scaling,
)
from pytest_gpufit.fit.spec import load_spec

YARN = (
    '{"rope_scaling": {"rope_type": "yarn", "factor": 4.0, '
    '"original_max_position_embeddings": 32768}}'
)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "text",
    [
        "yarn:4:32768",
        YARN,  # vLLM's --hf-overrides
        '{"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 32768}',
        '{"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}',
    ],
)
def test_every_form_users_write(text: str) -> None:
    assert parse_rope_scaling(text) == RopeScaling("yarn", 4.0, 32768)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yarn", "expected TYPE:FACTOR[:ORIGINAL]"),
        ("yarn:4", "yarn needs original_max_position_embeddings"),
        ("yarn:x:32768", "factor must be a number"),
        ("yarn:0.5:32768", "factor must be a number above 1"),
        ("yarn:4:3.5", "original_max_position_embeddings must be a whole number"),
        ("{not json", "--rope-scaling: not JSON"),
        ('{"factor": 4}', "rope_type (or type) is missing"),
        ("[1, 2]", "expected TYPE:FACTOR"),
    ],
)
def test_bad_rope_scaling_is_one_error(text: str, message: str) -> None:
    with pytest.raises(GpufitError, match=re.escape(message)):
        parse_rope_scaling(text)


def test_the_maximum_as_vllm_derives_it() -> None:
    qwen = load_spec("qwen3-30b-a3b")
    assert qwen.max_position_embeddings == 40960
    assert scaled_maximum(qwen, RopeScaling("yarn", 4.0, 32768)) == 131072
    assert scaled_maximum(qwen, RopeScaling("dynamic", 2.0)) == 81920
    # llama3 scaling is already in Llama 3.1's 131,072: vLLM does not scale it again.
    llama = load_spec("llama-3.1-8b")
    assert scaled_maximum(llama, RopeScaling("llama3", 8.0, 8192)) == 131072
    scaled = with_rope_scaling(qwen, RopeScaling("yarn", 4.0, 32768))
    assert scaled.max_position_embeddings == 131072
    assert "impacting performance on shorter texts" in scaled.warnings[-1]  # the card's note
    assert with_rope_scaling(qwen, None) is qwen


def test_beyond_the_trained_length_says_how_the_card_extends_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "fit", "qwen3-30b-a3b", "--context", "131072", "--gpu", "h100")
    assert code == 2
    assert "beyond Qwen3-30B-A3B's maximum of 40,960 tokens" in err
    assert "--rope-scaling yarn:4:32768" in err and YARN in err
    # Beyond what the card documents: no such hint.
    code, _, err = run(capsys, "fit", "qwen3-30b-a3b", "--context", "262144", "--gpu", "h100")
    assert code == 2 and "--rope-scaling" not in err


def test_the_plan_at_131072_tokens_with_yarn(capsys: pytest.CaptureFixture[str]) -> None:
    """Qwen3's documented 131,072-token setting on 2 x RTX PRO 6000: the table and the vLLM plan
    run there, and the card's note about quality is printed."""
    args = ["fit", "qwen3-30b-a3b", "--gpu", "2*rtx-pro-6000", "--context", "131072"]
    code, out, err = run(capsys, *args, "--engine", "vllm", "--hf-overrides", YARN)
    assert code == 0, err
    assert "context 131072" in out
    assert "Maximum concurrency for 131,072 tokens per request" in out
    assert "note: rope scaling yarn x4: maximum context 131,072 tokens; the Qwen3 model card" in out
    code, out, _ = run(
        capsys, *args, "--engine", "vllm", "--rope-scaling", "yarn:4:32768", "--json"
    )
    engine = json.loads(out)["gpus"][0]["engine"]
    assert code == 0 and engine["starts"] and engine["max_model_len"] == 131072


def test_upgrade_at_a_scaled_context(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "upgrade",
        "rtx-pro-6000",
        "2*rtx-pro-6000",
        "qwen3-32b",
        "--dtypes",
        "bf16",
        "--context",
        "131072",
        "--rope-scaling",
        "yarn:4:32768",
        "--format",
        "json",
    )
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["b"]["context"] == 131072 and row["b"]["starts"]


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_upgrade_prints_the_model_cards_note(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    # Before: `gpufit fit` printed the Qwen3 card's caution about static YaRN, `gpufit upgrade`
    # (the view the second-card question is asked in) did not, in any format.
    code, out, err = run(
        capsys,
        "upgrade",
        "rtx-pro-6000",
        "2*rtx-pro-6000",
        "qwen3-30b-a3b",
        "qwen3-32b",
        "--dtypes",
        "bf16",
        "--context",
        "131072",
        "--rope-scaling",
        "yarn:4:32768",
        "--format",
        fmt,
    )
    assert code == 0, err
    note = "rope scaling yarn x4: maximum context 131,072 tokens; the Qwen3 model card"
    if fmt == "json":
        rows = json.loads(out)
        assert all(any(note in n for n in row["notes"]) for row in rows)
    else:
        for model in ("Qwen3-30B-A3B", "Qwen3-32B"):  # once per model, above the table
            assert out.count(f"note: {model}: {note}") == 1, out
        assert out.index(note) < out.index("| Qwen3-32B" if fmt == "markdown" else "dtype")
