"""The shipped CPU serving suite end to end: gpufit launches a real ``transformers serve`` on the
committed tiny checkpoint, checks it over HTTP, and stops it (issue 11).

One server for the whole run. ``transformers serve`` returns no logprobs, so the golden
precision check appended here must fail, clearly, never pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp  # noqa: F401
import httpcore  # noqa: F401  (see test_suite_openai.py: kept across pytester's runs)
import httpx  # noqa: F401
import pytest

# The machine alone for this file: its streams are timed (tests/conftest.py, cpu_alone).
pytestmark = pytest.mark.usefixtures("cpu_alone")

ROOT = Path(__file__).parent.parent
SUITE = ROOT / "suites" / "serve-cpu-example.yaml"


def test_shipped_serve_suite_on_a_real_transformers_serve(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    text = SUITE.read_text().replace("models/tiny-serve", str(ROOT / "suites/models/tiny-serve"))
    text += "      precision: {reference: golden, prompt_tokens: 8, new_tokens: 3, top_k: 2}\n"
    pytester.makefile(".gpufit.yaml", s=text)
    report = tmp_path / "report.json"
    result = pytester.runpytest(
        "s.gpufit.yaml", "--gpufit-on-missing=fail", "-rA", f"--gpufit-report={report}"
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=5, failed=1)
    for check in ("fits", "serves", "generates", "throughput", "load"):
        result.stdout.fnmatch_lines([f"PASSED s.gpufit.yaml::tiny-transformers-serve::{check}"])
    result.stdout.fnmatch_lines(["FAILED s.gpufit.yaml::tiny-transformers-serve::precision*"])
    assert "precision: the server at http://127.0.0.1:" in out
    assert "returned no logprobs (asked for top 2)" in out
    assert "gpufit load tiny-transformers-serve: concurrency 1: 8/8 ok" in out
    assert "gpufit load tiny-transformers-serve: concurrency 4: 8/8 ok" in out
    assert "server log: " in out and "Traceback" not in out
    data = json.loads(report.read_text())["measurements"]
    node = "s.gpufit.yaml::tiny-transformers-serve::"
    serves = data[node + "serves"]["metrics"]
    assert serves["engine"] == "transformers"  # from its launch command; it said owned_by "local"
    assert serves["served_model"].endswith("tiny-serve")
    assert Path(serves["server_log"]).read_text().count("gpufit launch:") == 1
    throughput = data[node + "throughput"]["metrics"]
    assert throughput["prompt_tokens"] == 16 and throughput["decode_tok_s"] > 0
    load = data[node + "load"]["metrics"]
    assert load["c1_goodput"] == load["c4_goodput"] == 1.0
    generates = data[node + "generates"]["metrics"]
    assert generates["new_tokens"] == 4 and generates["text"].strip()
    # The server was stopped with its whole process group: nothing left running.
    with pytest.raises(ProcessLookupError):
        os.killpg(serves["server_pgid"], 0)
