"""A generated JSON Schema file: write it, or check that the shipped copy is current."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(argv: list[str] | None, text: str, path: Path, module: str) -> int:
    """``python -m MODULE`` writes ``text`` to ``path``; ``--check`` exits 1 when it differs."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        if not path.is_file() or path.read_text("utf-8") != text:
            print(f"{path} is stale; run: python -m {module}")
            return 1
        return 0
    if args:
        print(f"usage: python -m {module} [--check]", file=sys.stderr)
        return 2
    path.write_text(text, "utf-8")
    print(f"wrote {path}")
    return 0
