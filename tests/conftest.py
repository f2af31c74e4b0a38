"""Shared set-up for the plugin's own tests."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

# pytester's in-process runs restore sys.modules after each run; hypothesis's plugin imports
# its library in every terminal summary, so load it once here instead of once per run.
try:
    import hypothesis.internal.observability  # noqa: F401
except ImportError:
    pass

# Compiled extensions (torch, tokenizers, safetensors) cannot be imported twice in a process: if
# an in-process pytester run imported them first, restoring sys.modules afterwards would make
# the next import crash. Load them before any run, when the hf extra is installed.
try:
    import safetensors.torch  # noqa: F401
    import tokenizers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError:
    pass

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

# A run started in the background of a script (`.ci/run &`, nohup, some runners) inherits
# SIGINT ignored, and an ignored signal stays ignored through exec: every process a test starts
# would ignore the Ctrl-C the interrupt tests send (tests/test_ab_interrupt.py,
# test_suite_openai.py), and they would wait out their timeouts. Python's own handler here
# gives the children SIGINT's default again, as a terminal's Ctrl-C finds them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread: leave it
        pass


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-gpu-tier",
        action="store_true",
        help="run the tests marked gpu (needs a real NVIDIA GPU)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The GPU tier runs only when asked (scripts/gpu-tier.sh): it needs a real NVIDIA GPU.
    if collection_path == TESTS / "gpu" and not config.getoption("--run-gpu-tier"):
        return True
    return None


# What a developer's shell or a CI runner sets must not change what a test sees: a leaked
# GPUFIT_ON_MISSING=fail turns expected skips into failures, GITHUB_STEP_SUMMARY makes every
# session append to the job page, CUDA_VISIBLE_DEVICES hides or renumbers cards.
LEAKY = ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "CI", "CUDA_VISIBLE_DEVICES")


def leaky_names(environ: Mapping[str, str]) -> list[str]:
    """The variables of ``environ`` that must not reach a test."""
    return sorted(n for n in environ if n.startswith("GPUFIT_") or n in LEAKY)


@pytest.fixture(autouse=True)
def _isolated_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear the leaky variables for every test. pytester runs, in-process or subprocess,
    inherit ``os.environ``, so they start clean too; a test's own ``monkeypatch.setenv`` runs
    after this fixture and wins."""
    gpu_tier = TESTS / "gpu" in request.path.parents
    for name in leaky_names(os.environ):
        # The GPU tier judges the real machine: a scheduler's CUDA_VISIBLE_DEVICES is part of it.
        if not (gpu_tier and name == "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(name)


# Tests that time something real hold the machine alone: every other test takes a shared lock
# for its run, a module that asks for cpu_alone an exclusive one for all of it. Beside the
# other xdist worker on a 2-core box, CI failed on timing that was not the code's:
# - real vLLM (test_vllm_real): streams read in bursts, refused as buffered, about one CI run
#   in two;
# - gpufit ab's verdicts (test_ab): an A/A and a 1.6x slowdown read inconclusive;
# - a fast stream read late, all at once (test_remote_endpoint's throughput, three rounds in
#   a row, 2026-12-06; test_serving_load's first test, twice; with test_serving_real and
#   test_suite_openai_real, the files that time streams).
_CPU_LOCK = (
    Path(tempfile.gettempdir())
    / f"gpufit-tests-{os.environ.get('PYTEST_XDIST_TESTRUNUID', '')}.lock"
)


def _flock(mode: int) -> int | None:
    """An open lock file held in ``mode``; None outside xdist (nothing runs beside)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return None
    fd = os.open(_CPU_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, mode)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the lock


@pytest.fixture(autouse=True)
def _beside_others(request: pytest.FixtureRequest) -> Iterator[None]:
    if "cpu_alone" in request.fixturenames:  # under its module's exclusive lock already
        yield
        return
    fd = _flock(fcntl.LOCK_SH)
    try:
        yield
    finally:
        _unlock(fd)


@pytest.fixture(scope="module")
def cpu_alone() -> Iterator[None]:
    """The whole machine for this module's tests: no other test runs meanwhile."""
    fd = _flock(fcntl.LOCK_EX)
    try:
        yield
    finally:
        _unlock(fd)
