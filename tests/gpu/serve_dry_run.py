"""Rewrite tests/gpu/serve.gpufit.yaml for the CPU dry run of the GPU tier.

    python tests/gpu/serve_dry_run.py OUT_DIR MODEL_DIR

Writes OUT_DIR/serve-dry.gpufit.yaml: the same target and checks, on ``device: cpu`` with
``--device cpu``, the model at MODEL_DIR (the ``--tiny`` checkpoint), and sizes a loaded
2-core machine finishes in a minute or two. Everything else (launch, checks, their options)
is the GPU file's own, so the dry run proves that file parses and runs end to end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

SUITE = Path(__file__).with_name("serve.gpufit.yaml")
SIZES = {"prompt_tokens": 16, "new_tokens": 8}


def rewrite(suite: dict[str, Any], model: str) -> dict[str, Any]:
    for target in suite["targets"]:
        target["device"] = "cpu"
        target["model"] = model
        command = target["launch"]["command"]
        command[command.index("serve-model")] = model
        command[command.index("--device") + 1] = "cpu"
        checks = target["checks"]
        checks["throughput"].update(SIZES, warmup=1, repeats=3)
        checks["load"].update(SIZES, requests=8, concurrency=[1, 4])
    suite["suite"] += "-dry-run"
    return suite


def main() -> int:
    out, model = Path(sys.argv[1]), str(Path(sys.argv[2]).resolve())
    suite = rewrite(yaml.safe_load(SUITE.read_text()), model)
    path = out / "serve-dry.gpufit.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
