"""Speed of the fit engine: ``gpufit table`` over 20 models x 15 GPU setups x 4 precisions.

Target: under 1 s, and no torch import. Prints the in-process time (cold and warm caches) and
the wall time of the ``gpufit table`` command itself.

    python benchmarks/fit.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_gpufit.fit import spec as spec_module
from pytest_gpufit.fit.table import build_rows, default_models, parse_setups, render
from pytest_gpufit.hardware.catalog import catalog

SETUPS = ",".join([*catalog(), "2*rtx-pro-6000-blackwell", "2*h100-sxm"])
DTYPES = ["bf16", "fp8", "int4", "stored"]


def synthetic_models(folder: Path) -> list[str]:
    """Ten dense and MoE variants of other sizes, written as config.json files."""
    paths = []
    for i in range(10):
        moe = i % 2 == 1
        config = {
            "model_type": "qwen3_moe" if moe else "llama",
            "hidden_size": 1024 * (i + 1),
            "num_hidden_layers": 16 + 4 * i,
            "num_attention_heads": 8 * (i + 1),
            "num_key_value_heads": 8,
            "intermediate_size": 2816 * (i + 1),
            "vocab_size": 128000,
            "max_position_embeddings": 32768,
            "torch_dtype": "bfloat16",
        }
        if moe:
            config.update(num_experts=64, num_experts_per_tok=8, moe_intermediate_size=512 * i)
        path = folder / f"synthetic-{i}.json"
        path.write_text(json.dumps(config))
        paths.append(str(path))
    return paths


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        models = default_models() + synthetic_models(Path(tmp))
        setups = parse_setups(SETUPS)
        timings = []
        for _ in range(5):
            spec_module._load_spec.cache_clear()
            start = time.perf_counter()
            render(build_rows(models, setups, DTYPES), setups)
            timings.append(time.perf_counter() - start)
        cells = len(models) * len(setups) * len(DTYPES)
        command = [
            sys.executable,
            "-m",
            "pytest_gpufit.cli",
            "table",
            *models,
            "--gpus",
            SETUPS,
            "--dtypes",
            ",".join(DTYPES),
        ]
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
    print(f"{len(models)} models x {len(setups)} setups x {len(DTYPES)} precisions = {cells} cells")
    print(
        f"in-process, cold spec cache: median {statistics.median(timings):.3f} s "
        f"(min {min(timings):.3f})"
    )
    print(f"gpufit table command, wall:  median {statistics.median(walls):.3f} s (target < 1 s)")
    print(f"torch imported: {'torch' in sys.modules}")


if __name__ == "__main__":
    main()
