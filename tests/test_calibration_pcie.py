"""The published PCIe link and second-card decode rows (issue 21, item 2's data): every row
names a public source and quotes it, and carries its figure as the source prints it."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

CALIBRATION = Path(__file__).parent.parent / "fixtures" / "calibration"
FIGURE = re.compile(r"^~?[0-9][0-9,]*(\.[0-9]+)?(-[0-9][0-9,]*(\.[0-9]+)?)?$")


def rows(name: str) -> list[dict[str, str]]:
    with (CALIBRATION / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.parametrize(
    ("name", "measures"),
    [
        (
            "pcie-link.tsv",
            {
                "p2p_write_bw_unidir",
                "p2p_bw_bidir",
                "p2p_latency",
                "p2pmark_effective_latency",
                "allreduce_busbw",
                "allreduce_time",
            },
        ),
        (
            "pcie-decode.tsv",
            {"decode_tok_s_batch1", "aggregate_output_tok_s", "aggregate_decode_tok_s"},
        ),
    ],
)
def test_every_row_has_a_public_source_a_quote_and_a_figure(name: str, measures: set[str]) -> None:
    table = rows(name)
    assert len(table) >= 20
    for number, row in enumerate(table, start=2):
        where = f"{name}:{number}"
        assert None not in row and None not in row.values(), f"{where}: wrong column count"
        assert row["measure"] in measures, where
        assert row["source_url"].startswith("https://"), where
        assert len(row["source_quote"]) >= 10, where
        assert FIGURE.match(row["value"]), f"{where}: {row['value']!r}"
        assert row["unit"] in {"GB/s", "us", "tok/s"}, where
        if "rtx6kpro" in row["source_url"] or "github.com/tinygrad" in row["source_url"]:
            assert re.search(r"/blob/[0-9a-f]{40}/", row["source_url"]), f"{where}: pin the commit"


def test_the_figure_is_in_its_quote() -> None:
    for name in ("pcie-link.tsv", "pcie-decode.tsv"):
        for number, row in enumerate(rows(name), start=2):
            figure = row["value"].lstrip("~").split("-")[0]
            assert figure in row["source_quote"].replace("–", "-"), f"{name}:{number}"
