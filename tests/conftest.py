"""Shared set-up for the plugin's own tests."""

from __future__ import annotations

import sys
from pathlib import Path

# pytester's in-process runs restore sys.modules after each run; hypothesis's plugin imports
# its library in every terminal summary, so load it once here instead of once per run.
try:
    import hypothesis.internal.observability  # noqa: F401
except ImportError:
    pass

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
