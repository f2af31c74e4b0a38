"""What the first YAML file costs: importing the validators (after the plugin) and reading the
shipped suites and runner pool, beside what importing pydantic v2 would add (issue 19.7).

Each figure is a fresh interpreter; prints the median and minimum of ``--runs`` runs.

    python benchmarks/yaml_validators.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
VALIDATORS = """
import time, pytest_gpufit.plugin
from pathlib import Path
t0 = time.perf_counter()
from pytest_gpufit.suites.schema import parse_suite
from pytest_gpufit.fleet.pool import load_pool
t1 = time.perf_counter()
for suite in sorted(Path("suites").glob("*.yaml")):
    parse_suite(suite)
load_pool(Path("gpufit-runners.yaml"))
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""
PYDANTIC = """
import time
t0 = time.perf_counter()
from pydantic import BaseModel
class Runner(BaseModel):
    name: str
    shards: int = 1
Runner(name="h100")
print(time.perf_counter() - t0, 0.0)
"""


def measure(code: str, runs: int) -> list[tuple[float, float]]:
    out = []
    for _ in range(runs):
        text = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        first, second = (float(x) * 1000 for x in text.split())
        out.append((first, second))
    return out


def line(label: str, values: list[float]) -> str:
    return f"{label:<42} median {statistics.median(values):6.1f} ms  min {min(values):6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    validators = measure(VALIDATORS, args.runs)
    print(f"runs={args.runs}")
    print(line("import suites.schema + fleet.pool", [v[0] for v in validators]))
    print(line("read the shipped suites and runner pool", [v[1] for v in validators]))
    try:
        pydantic = measure(PYDANTIC, args.runs)
    except subprocess.CalledProcessError:
        print("pydantic: not installed")
        return
    print(line("import pydantic v2 + define one model", [v[0] for v in pydantic]))


if __name__ == "__main__":
    main()
