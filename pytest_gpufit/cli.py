"""The ``gpufit`` command: probe | fit | table."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.probe import build_inventory
from pytest_gpufit.hardware.records import Inventory
from pytest_gpufit.settings import OPTIONS

_SIMULATE = next(o for o in OPTIONS if o.name == "simulate")


def _probe(args: argparse.Namespace) -> int:
    inventory = build_inventory(args.simulate)
    if args.json:
        print(json.dumps(inventory.to_dict(), indent=2))
        return 0
    print(probe_text(inventory))
    return 0


def probe_text(inventory: Inventory) -> str:
    if not inventory.gpus:
        return f"no GPU: {inventory.reason or 'none found'}"
    env = inventory.environment
    lines = [f"source: {inventory.source}; driver {env.driver_version or '-'}, "
             f"CUDA {env.cuda_driver_version or '-'}, torch {env.torch_version or '-'}"]
    for g in inventory.gpus:
        bw = (f", {g.memory_bandwidth_bytes_s / 1e9:.0f} GB/s"
              if g.memory_bandwidth_bytes_s else "")
        lines.append(f"{g.describe()}{bw}; native: {', '.join(g.native_dtypes) or '-'}")
    lines += [f"warning: {w}" for w in inventory.warnings]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="gpufit", description="What this GPU can run.")
    sub = top.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("probe", help="what GPUs this machine has (NVML; no CUDA context)")
    probe.add_argument("--json", action="store_true", help="print the inventory as JSON")
    probe.add_argument("--simulate", metavar="ID[,ID...]", help=_SIMULATE.help)
    probe.set_defaults(run=_probe)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except GpufitError as error:
        print(f"gpufit: error: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
