"""Time of ``gpufit plan`` for 2,000 gated tests on 6 runner classes (target < 2 s, no torch).

Writes a 2,000-test file (every test gated, markers cycling through VRAM, dtype, compute
capability, GPU count, driver and fit requirements) and a pool of six classes, then runs, in
fresh processes, interleaved for several rounds:

- ``gpufit plan --runners pool.yaml --format github-matrix .`` (the whole command), and
- ``pytest --collect-only -q`` of the same folder (what collection alone costs),

and prints both medians, the plan's own share (the difference) and whether the plan process
imported torch.

    python benchmarks/fleet_plan.py [--rounds 5] [--tests 2000]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKERS = [
    "requires_vram(24)",
    "requires_vram(90)",
    "requires_dtype('fp8')",
    "requires_compute_capability('9.0')",
    "requires_gpu(count=2)",
    "requires_driver('>=550')",
    "requires_fit('qwen3-32b', dtype='fp8')",
]
POOL = """\
runners:
  - {name: rtx4090, labels: [self-hosted, rtx4090], gpus: rtx-4090, driver: ">=550"}
  - {name: pro6000, labels: [self-hosted, pro6000], gpus: rtx-pro-6000-blackwell, driver: ">=570"}
  - {name: h100, labels: [self-hosted, h100], gpus: h100-sxm, driver: ">=550", shards: 2}
  - {name: h100x2, labels: [self-hosted, h100x2], gpus: 2*h100-sxm, driver: ">=550", shards: 2}
  - {name: h200, labels: [self-hosted, h200], gpus: h200, driver: ">=560"}
  - {name: l40s, labels: [self-hosted, l40s], gpus: 2*l40s, driver: ">=535"}
"""
PROBE = (
    "import sys, runpy; sys.argv = ['gpufit'] + sys.argv[1:]; "
    "from pytest_gpufit.cli import main; code = main(); "
    "print('torch imported' if 'torch' in sys.modules else 'torch not imported', "
    "file=sys.stderr); sys.exit(code)"
)


def write_project(folder: Path, n_tests: int) -> None:
    lines = ["import pytest", ""]
    for i in range(n_tests):
        lines += [f"@pytest.mark.{MARKERS[i % len(MARKERS)]}", f"def test_{i}():", "    pass", ""]
    (folder / "test_generated.py").write_text("\n".join(lines))
    (folder / "pool.yaml").write_text(POOL)
    (folder / "pytest.ini").write_text("[pytest]\n")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(folder: Path, command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stderr): CPU time is what a loaded machine does not
    inflate; wall time is what a user waits for on an idle one."""
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, _cpu() - cpu, done.stderr


def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--tests", type=int, default=2000)
    args = options.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_project(folder, args.tests)
        plan_cmd = [sys.executable, "-c", PROBE, "plan", "--runners", "pool.yaml"]
        plan_cmd += ["--format", "github-matrix", "."]
        collect_cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q"]
        collect_cmd += ["-p", "no:cacheprovider", "."]
        timed(folder, plan_cmd)  # warm the file cache
        plans, collects, torch = [], [], ""
        for _ in range(args.rounds):
            wall, cpu, err = timed(folder, plan_cmd)
            plans.append((wall, cpu))
            torch = err.strip().splitlines()[-1]
            collects.append(timed(folder, collect_cmd)[:2])
    pw, pc = (statistics.median(p[i] for p in plans) for i in (0, 1))
    cw, cc = (statistics.median(c[i] for c in collects) for i in (0, 1))
    print(f"{args.tests} gated tests x 6 runner classes, {args.rounds} rounds, medians:")
    print(f"  gpufit plan (whole command)  wall {pw:.2f} s, CPU {pc:.2f} s   (target < 2 s)")
    print(f"  pytest --collect-only        wall {cw:.2f} s, CPU {cc:.2f} s")
    print(f"  the plan's own share         wall {pw - cw:+.2f} s, CPU {pc - cc:+.2f} s")
    print(f"  {torch}")


if __name__ == "__main__":
    main()
