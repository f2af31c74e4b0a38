"""Start-up cost of the plugin: collect a generated 2,000-test file with and without it.

Runs ``pytest --collect-only -q`` with the plugin and with ``-p no:gpufit``, interleaved, for
several rounds, and prints both medians and their ratio (target <= 1.05).

    python benchmarks/startup.py [--rounds 7] [--tests 2000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKERS = [
    "requires_vram(24)",
    "requires_dtype('bf16')",
    "requires_compute_capability('8.9')",
    "requires_gpu(count=2)",
    "requires_driver('>=550')",
    None,
]


def write_suite(folder: Path, n_tests: int) -> None:
    lines = ["import pytest", ""]
    for i in range(n_tests):
        marker = MARKERS[i % len(MARKERS)]
        if marker:
            lines.append(f"@pytest.mark.{marker}")
        lines += [f"def test_{i}():", "    pass", ""]
    (folder / "test_generated.py").write_text("\n".join(lines))
    # Register the markers, so the run without the plugin pays no unknown-mark warnings.
    names = sorted({m.split("(")[0] for m in MARKERS if m})
    (folder / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n" + "".join(f"    {n}\n" for n in names)
    )


def collect(folder: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *extra],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_suite(folder, args.tests)
        collect(folder, [])  # warm the file cache and bytecode
        with_plugin, without = [], []
        for _ in range(args.rounds):
            with_plugin.append(collect(folder, []))
            without.append(collect(folder, ["-p", "no:gpufit"]))
    a, b = statistics.median(with_plugin), statistics.median(without)
    print(f"tests={args.tests} rounds={args.rounds}")
    print(f"with gpufit     median {a:.3f} s  (min {min(with_plugin):.3f})")
    print(f"without gpufit  median {b:.3f} s  (min {min(without):.3f})")
    print(f"ratio {a / b:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
