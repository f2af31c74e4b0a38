"""All-reduce sweep (nccl-tests' all_reduce_perf figures) with torch.distributed.

On the CPU (no GPU given) it runs ``--processes`` gloo ranks; with ``--gpus`` (``all`` or
``0,1``) one NCCL rank per GPU of the probe, after printing the probe's topology and P2P for
the pairs. Prints the sweep table and the metrics a baseline keeps; ``--json`` writes them.

    python benchmarks/allreduce_sweep.py --processes 2 --min 8B --max 4MiB
    python benchmarks/allreduce_sweep.py --gpus all --min 8B --max 256MiB --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_gpufit.allreduce import BASELINE_METRICS, floor_failures, measure, parse_params  # noqa: E402
from pytest_gpufit.hardware.probe import build_inventory  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", help="'all' or GPU indices such as 0,1 (default: the CPU)")
    parser.add_argument("--processes", type=int, default=2, help="gloo ranks on the CPU")
    parser.add_argument("--min", default="8B", help="smallest size (default 8B)")
    parser.add_argument("--max", default="4MiB", help="largest size (default 4MiB)")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the metrics and the probe's links here")
    args = parser.parse_args()
    raw = {
        "min_size": args.min,
        "max_size": args.max,
        "factor": args.factor,
        "dtype": args.dtype,
        "iters": args.iters,
        "repeats": args.repeats,
    }
    devices = []
    links = []
    if args.gpus:
        inventory = build_inventory()
        if not inventory.gpus:
            print(f"no GPU: {inventory.reason}", file=sys.stderr)
            return 1
        wanted = (
            [g.index for g in inventory.gpus]
            if args.gpus == "all"
            else [int(i) for i in args.gpus.split(",")]
        )
        devices = [g for g in inventory.gpus if g.index in wanted]
        links = [x for x in inventory.links if x.a in wanted and x.b in wanted]
        for gpu in devices:
            print(f"# {gpu.describe()}")
        for link in links:
            print(f"# link {link.describe()}")
    else:
        raw["processes"] = args.processes
    params = parse_params(raw, "benchmark")
    result = measure(params, devices)
    print(result.table())
    metrics = result.metrics()
    for name in BASELINE_METRICS:
        print(f"{name}: {metrics[name]:.4g} (spread {metrics[name + '_spread']:.1%})")
    print(f"allreduce_avg_busbw_gb_s: {metrics['allreduce_avg_busbw_gb_s']:.4g}")
    for failure in floor_failures(result, params):
        print(f"FAIL: {failure}")
    if args.json:
        data = {"metrics": metrics, "links": [x.to_dict() for x in links]}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
