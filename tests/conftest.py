"""Shared set-up for the plugin's own tests."""

from __future__ import annotations

import sys
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
