"""A server gpufit does not launch (``endpoint:`` and no ``launch:``) is not gated on this
machine's GPU: its device is ``remote`` by default, and the ``requires:`` keys that would judge
this machine are collection errors saying why (issue 22, item 3).

The end-to-end test starts a real ``transformers serve`` on the committed tiny checkpoint itself
(the "deployment"), then runs a suite that only names its endpoint, under the fail policy, on
this machine with no GPU.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp  # noqa: F401  (kept across pytester's in-process runs, as test_suite_openai.py)
import httpcore  # noqa: F401
import httpx  # noqa: F401
import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.serving.server import LaunchedServer
from pytest_gpufit.suites.schema import parse_suite

# The machine alone for this file: its streams are timed (tests/conftest.py, cpu_alone).
pytestmark = pytest.mark.usefixtures("cpu_alone")

ROOT = Path(__file__).parent.parent
TINY = ROOT / "suites" / "models" / "tiny-serve"

REMOTE = """\
suite: staging
targets:
  - name: deployed
    backend: openai
    endpoint: {endpoint}
    checks:
      serves: {{}}
      generates: {{prompt: "the capital of france is", max_new_tokens: 4}}
      throughput: {{prompt_tokens: 16, new_tokens: 8, warmup: 1, repeats: 2}}
"""


@pytest.fixture(scope="module")
def deployment() -> Iterator[LaunchedServer]:
    """A real server someone else runs, as far as the suite knows."""
    pytest.importorskip("transformers")
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(TINY)]
    command += ["--host", "127.0.0.1", "--port", "{port}", "--device", "cpu"]
    with LaunchedServer(command, ready_timeout_s=240) as server:
        yield server


def test_a_remote_endpoint_runs_green_under_fail_with_no_gpu_and_no_device_key(
    pytester: pytest.Pytester, deployment: LaunchedServer, tmp_path: Path
) -> None:
    pytester.makefile(".gpufit.yaml", staging=REMOTE.format(endpoint=deployment.base_url))
    report = tmp_path / "report.json"
    result = pytester.runpytest(
        "staging.gpufit.yaml", "--gpufit-on-missing=fail", "-rA", f"--gpufit-report={report}"
    )
    # Before: device defaulted to cuda, so every check failed for want of a local GPU.
    result.assert_outcomes(passed=3)
    assert "staging::deployed  bf16   remote" in result.stdout.str()
    data = json.loads(report.read_text())
    measured = data["measurements"]["staging.gpufit.yaml::deployed::serves"]
    assert measured["device"] == "remote"
    assert measured["metrics"]["served_model"].endswith("tiny-serve")


def suite_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.gpufit.yaml"
    path.write_text(text)
    return path


ENDPOINT = "http://127.0.0.1:8000/v1"


def test_the_device_of_an_endpoint_without_launch_is_remote_and_the_rest_keep_theirs(
    tmp_path: Path,
) -> None:
    suite = parse_suite(suite_file(tmp_path, REMOTE.format(endpoint=ENDPOINT)))
    assert suite.targets[0].device == "remote" and suite.targets[0].launch is None
    # A target that names its device keeps it (a server on this machine, started by hand).
    text = REMOTE.format(endpoint=ENDPOINT).replace("    checks:", "    device: cuda\n    checks:")
    assert parse_suite(suite_file(tmp_path, text)).targets[0].device == "cuda"
    # A launched server runs here: cuda by default, as before.
    launched = REMOTE.format(endpoint="http://127.0.0.1:{port}/v1").replace(
        "    checks:", "    launch: {command: [serve, --port, '{port}']}\n    checks:"
    )
    assert parse_suite(suite_file(tmp_path, launched)).targets[0].device == "cuda"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("    checks:", "    requires: {vram: 80GB}\n    checks:"),
            "s.gpufit.yaml:6: targets[0].requires.vram: judges this machine's GPUs (or its "
            "torch), but this target is a remote endpoint (no launch:), so its hardware is the "
            "server's and this machine's GPUs are never used; drop it",
        ),
        (
            ("suite: staging\n", "suite: staging\nrequires: {dtype: bf16}\n"),
            "s.gpufit.yaml:2: requires: judges this machine's GPUs (or its torch), but target "
            "'deployed' (line 4) is a remote endpoint (no launch:), whose hardware is the "
            "server's; move requires: to the targets that run here",
        ),
        (
            ("    checks:\n      serves: {}", "    model: qwen3-0.6b\n    checks:\n      fits: {}"),
            "s.gpufit.yaml:8: targets[0].checks.fits: estimates the model on this machine's "
            "memory, but this target is a remote endpoint",
        ),
        (
            (
                "    checks:",
                "    device: remote\n    launch: {command: [serve, --port, '{port}']}\n    checks:",
            ),
            "s.gpufit.yaml:6: targets[0].device: remote is a server gpufit does not start",
        ),
    ],
    ids=["target-requires", "suite-requires", "fits", "remote-with-launch"],
)
def test_what_would_judge_this_machine_for_a_remote_endpoint_is_a_collection_error(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    endpoint = "http://127.0.0.1:{port}/v1" if "launch" in edit[1] else ENDPOINT
    text = REMOTE.format(endpoint=endpoint).replace(*edit)
    with pytest.raises(GpufitError) as error:
        parse_suite(suite_file(tmp_path, text))
    assert str(error.value).startswith(f"{tmp_path}/{message}"), str(error.value)


def test_the_json_schema_takes_remote() -> None:
    schema = json.loads((ROOT / "pytest_gpufit" / "suites" / "schema.json").read_text())
    target = schema["properties"]["targets"]["items"]["properties"]
    assert "remote" in target["device"]["pattern"]
