"""``gpufit upgrade FROM TO`` (alias ``compare-setups``): what a second card adds."""

from __future__ import annotations

import json

import pytest

from pytest_gpufit.cli import main
from pytest_gpufit.fit.compare_setups import allreduce_bytes_per_token, decode_ceiling
from pytest_gpufit.fit.estimate import estimate
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.fit.table import parse_setups


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_second_rtx_pro_6000_for_the_users_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "upgrade",
        "rtx-pro-6000",
        "2*rtx-pro-6000",
        "llama-3.1-70b",
        "qwen3-30b-a3b",
        "--format",
        "json",
    )
    assert code == 0, err
    rows = {(r["model"], r["dtype"]): r for r in json.loads(out)}
    llama = rows[("Llama-3.1-70B", "bf16")]
    assert not llama["a"]["fits"] and llama["b"]["fits"] and llama["b"]["starts"]
    assert llama["gains"][:2] == ["newly fits", "newly starts"]
    assert llama["b"]["link"] == "pcie5" and 0 < llama["b"]["link_share"] < 0.05
    qwen = rows[("Qwen3-30B-A3B", "bf16")]
    assert qwen["a"]["starts"] and qwen["b"]["kv_cache_tokens"] > 2 * qwen["a"]["kv_cache_tokens"]
    assert any(g.startswith("copies 1 -> 2") for g in qwen["gains"])


def test_alias_text_and_legend(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "compare-setups", "h100", "2*h100", "llama-3.1-8b", "--dtypes", "bf16"
    )
    assert code == 0
    assert "2*h100-sxm adds" in out and "link nvlink4" in out
    assert "all-reduce latency is not counted, so it is a bound" in out


def test_the_link_is_paid_per_layer() -> None:
    spec = load_spec("llama-3.1-70b")
    # 80 layers x 2 all-reduces x 2(N-1)/N x hidden 8192 x 2 bytes
    assert allreduce_bytes_per_token(spec, 2, 2) == 80 * 2 * 1.0 * 8192 * 2
    assert allreduce_bytes_per_token(spec, 4, 2) == 80 * 2 * 1.5 * 8192 * 2
    est = estimate(spec, "fp8")
    (pcie,) = parse_setups("2*rtx-pro-6000")
    (one,) = parse_setups("rtx-pro-6000")
    two_cards, share, link = decode_ceiling(spec, est, pcie)
    single, _, _ = decode_ceiling(spec, est, one)
    assert link == "pcie5" and share > 0
    assert two_cards is not None and single is not None
    assert single < two_cards < 2 * single  # the link costs something, never nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("h100", "2*nope"), "second setup: unknown GPU id 'nope'"),
        (("h100,t4", "h200"), "first setup: one setup"),
        (("", "h200"), "first setup: set but empty"),
        (
            ("h100", "3*h100", "llama-3.1-8b"),
            None,
        ),  # TP 3 does not divide 32 heads: said, not raised
        (("h100", "h200", "--engine", "tgi"), "--engine: unknown engine 'tgi'"),
        (("h100", "h200", "--dtypes", ","), "--dtypes: no dtype given"),
        (("h100", "h200", "qwen3-0.6b", "--context", "65536"), "beyond Qwen3-0.6B's maximum"),
        (("h100", "h200", "no-such-model"), "not a shipped model id"),
        (("h100", "h200", " "), "a model name is empty"),
    ],
)
def test_bad_input_is_one_message(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str | None
) -> None:
    code, out, err = run(capsys, "upgrade", *args)
    if message is None:
        assert code == 0 and "do not divide the 32 attention heads" in out
        return
    assert code == 2 and out == "" and message in err, err
    assert "Traceback" not in err


def test_transformers_plans_at_the_tables_context_like_every_engine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The legend says the plan runs with --max-model-len at the table's context; transformers
    was planned at the model's maximum (131,072 for Llama-3.1-8B: 'does not start' on a 4090
    where 8,192 tokens fit easily)."""
    code, out, err = run(
        capsys,
        "upgrade",
        "rtx-4090",
        "2*rtx-4090",
        "llama-3.1-8b",
        "--dtypes",
        "bf16",
        "--engine",
        "transformers",
        "--format",
        "json",
    )
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["a"]["starts"] is True and row["a"]["reason"] is None
    assert 0 < row["a"]["kv_cache_tokens"] < row["b"]["kv_cache_tokens"]


def test_kv_and_concurrency_are_counted_as_vllm_counts_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The view said '272k KV' (k = 1,024) beside fit's '278,784 tokens', and no concurrency:
    now the KV cache as vLLM's log writes it and the requests of the user's context it holds."""
    code, out, _ = run(
        capsys, "upgrade", "rtx-pro-6000", "2*rtx-pro-6000", "qwen3-30b-a3b", "--dtypes", "bf16"
    )
    assert code == 0
    assert "starts, 278,784 KV, 34.03x" in out and "272k KV" not in out
    assert "concurrency 34.03x -> " in out and "at 8,192 tokens" in out
    assert "C x: requests of that context it holds at once" in out
    code, out, _ = run(
        capsys,
        "upgrade",
        "rtx-pro-6000",
        "2*rtx-pro-6000",
        "qwen3-30b-a3b",
        "--dtypes",
        "bf16",
        "--format",
        "json",
    )
    (row,) = json.loads(out)
    assert row["a"]["kv_cache_tokens"] == 278784 and row["a"]["max_concurrency"] == 34.03
    assert row["b"]["max_concurrency"] > 2 * row["a"]["max_concurrency"]
    assert row["a"]["context"] == row["b"]["context"] == 8192


def test_the_second_card_table_shows_every_way_with_its_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 21.2/21.6: for the user's two models on 1x vs 2x RTX PRO 6000, one table with
    TP 2, PP 2, 2 replicas (and EP for the MoE), each with memory per card, KV as vLLM counts
    it, requests at once, and decode (model, bound beside it); the same in --json."""
    args = ("upgrade", "rtx-pro-6000", "2*rtx-pro-6000", "qwen3-30b-a3b", "qwen3-32b")
    code, out, _ = run(capsys, *args, "--dtypes", "bf16")
    assert code == 0
    for way in ("TP 2", "PP 2", "2 replicas", "TP 2 + EP"):
        assert f"2*rtx-pro-6000-blackwell {way} " in out, way
    assert out.count("TP 2 + EP") == 1  # the MoE only
    assert "2 x 278,784 KV, 68.06x" in out  # replicas: one cache per copy, requests add up
    assert "link pcie5, host-bridge, P2P on, one-shot" in out and "no link" in out
    assert "(<= " in out and "a model (fit/decode_time.py" in out
    assert "+99% per copy" not in out and "decode ceiling" not in out
    code, out, _ = run(capsys, *args, "--dtypes", "bf16", "--format", "json")
    rows = {r["model"]: r for r in json.loads(out)}
    moe = {w["label"]: w for w in rows["Qwen3-30B-A3B"]["ways"]}
    dense = {w["label"]: w for w in rows["Qwen3-32B"]["ways"]}
    assert list(moe) == ["1 card", "TP 2", "PP 2", "2 replicas", "TP 2 + EP"]
    assert list(dense) == ["1 card", "TP 2", "PP 2", "2 replicas"]
    assert moe["TP 2 + EP"]["launch"] == "--tensor-parallel-size 2 --enable-expert-parallel"
    for ways in (moe, dense):
        one, tp, pp, dp = ways["1 card"], ways["TP 2"], ways["PP 2"], ways["2 replicas"]
        assert one["kv_cache_tokens"] < tp["kv_cache_tokens"] and tp["weights_bytes_per_card"]
        assert dp["decode"]["batch1_tok_s"] == one["decode"]["batch1_tok_s"]
        assert pp["decode"]["batch1_tok_s"] <= one["decode"]["batch1_tok_s"]
        assert one["decode"]["batch1_tok_s"] < tp["decode"]["batch1_tok_s"]
        for way in ways.values():
            d = way["decode"]
            assert d["batch1_tok_s"] < d["bound_tok_s"] and d["aggregate_tok_s"] > 0
    # the gain of the engine's own split is the model's decode change, not the bound's
    gains = rows["Qwen3-32B"]["gains"]
    assert any(g.startswith("decode +") and g.endswith("(model)") for g in gains), gains


def test_topology_p2p_and_concurrency_change_the_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def tp2(*extra: str) -> dict[str, object]:
        code, out, err = run(
            capsys,
            "upgrade",
            "rtx-pro-6000",
            "2*rtx-pro-6000",
            "qwen3-32b",
            "--dtypes",
            "bf16",
            "--format",
            "json",
            *extra,
        )
        assert code == 0, err
        (row,) = json.loads(out)
        return {w["label"]: w for w in row["ways"]}["TP 2"]  # type: ignore[no-any-return]

    near, far = tp2(), tp2("--topology", "SYS", "--p2p", "off")
    assert "one-shot" in str(near["link"]) and "sockets, P2P off, nccl" in str(far["link"])
    assert far["decode"]["batch1_tok_s"] < near["decode"]["batch1_tok_s"]  # type: ignore[index]
    assert tp2("--concurrency", "4")["decode"]["concurrency"] == 4  # type: ignore[index]
    # one card holds 10 requests of 8,192 tokens: the aggregate is at 10, and says so
    code, out, _ = run(
        capsys,
        "upgrade",
        "rtx-pro-6000",
        "2*rtx-pro-6000",
        "qwen3-32b",
        "--dtypes",
        "bf16",
        "--concurrency",
        "32",
    )
    assert "at C=10, all the cache holds" in out and "C=32 tok/s" in out


def test_a_card_without_p2p_runs_nccl(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "upgrade", "rtx-4090", "2*rtx-4090", "llama-3.1-8b", "--dtypes", "int4"
    )
    assert code == 0 and "P2P off, sends" in out  # the stock 4090 driver: no P2P
    code, out, _ = run(
        capsys,
        "upgrade",
        "rtx-4090",
        "2*rtx-4090",
        "llama-3.1-8b",
        "--dtypes",
        "int4",
        "--p2p",
        "on",
    )
    assert "P2P on, sends" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--topology", "bus"), "--topology: expected one of"),
        (("--p2p", "maybe"), "--p2p: expected on or off, got 'maybe'"),
    ],
)
def test_bad_link_options_are_one_message(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, "upgrade", "h100", "2*h100", "qwen3-0.6b", *args)
    assert code == 2 and out == "" and message in err, err
    assert "Traceback" not in err


def test_a_concurrency_below_one_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["upgrade", "h100", "2*h100", "qwen3-0.6b", "--concurrency", "0"])
    assert exit_info.value.code == 2
    assert "--concurrency: expected a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("level", ["nvlink", "NV4"])
def test_nvlink_is_refused_for_cards_without_it(
    capsys: pytest.CaptureFixture[str], level: str
) -> None:
    # Before: two RTX PRO 6000 (PCIe only) were modelled as NVLink, and the link cell lost its
    # topology ("link pcie5, one-shot 9%"): a figure for a machine that cannot exist.
    code, out, err = run(
        capsys, "upgrade", "rtx-pro-6000", "2*rtx-pro-6000", "qwen3-30b-a3b", "--topology", level
    )
    assert code == 2 and out == "", out
    assert f"--topology {level}: rtx-pro-6000-blackwell has no NVLink" in err, err
    assert "PIX, PXB, PHB, NODE, SYS" in err and "Traceback" not in err


def test_the_legend_explains_every_mark_the_cells_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: "(30 each)", "at C=10, all the cache holds", "(A: C=10)", "newly fits", "+16k
    # ctx", PP's "sends" had no legend entry, and the plan's entry said "--context: 8192" at
    # any --context.
    code, out, err = run(
        capsys,
        "upgrade",
        "rtx-pro-6000",
        "2*rtx-pro-6000",
        "qwen3-32b",
        "llama-3.1-70b",
        "mixtral-8x7b-v0.1",
        "--dtypes",
        "bf16",
    )
    assert code == 0, err
    table, legend = out.split("\n\n", 1)
    marks = ["each)", "all the cache holds", "(A: C=", "newly fits", "newly starts"]
    marks += [" ctx;", "copies ", "(one per card)", "sends", "no link", "(model)", "(<= "]
    for mark in marks:
        assert mark in table, mark  # the case covers it
        assert mark.strip(" ;") in legend, f"{mark!r} is not in the legend"
    assert "the table's context, 8,192 tokens (--context)" in legend
    code, out, err = run(
        capsys, "upgrade", "rtx-pro-6000", "2*rtx-pro-6000", "qwen3-32b", "--context", "16384"
    )
    legend = out.split("\n\n", 1)[1]
    assert code == 0 and "16,384 tokens" in legend and "8192" not in legend, err
    # the model's known optimism at long contexts is said where the figure is read
    assert "long contexts" in legend
