"""Print the GPU tier's short table from the JSON files scripts/gpu-tier.sh wrote."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def main(out: Path) -> None:
    probe = load(out / "probe.json") or {}
    env = probe.get("environment", {})
    for gpu in probe.get("gpus", []):
        print(
            f"card: {gpu['name']}, {gpu['memory_total_bytes'] / 1e9:.1f} GB, CC "
            f"{gpu['compute_capability']}, {(gpu['memory_bandwidth_bytes_s'] or 0) / 1e9:.0f} "
            f"GB/s (NVML); driver {env.get('driver_version')}, CUDA "
            f"{env.get('cuda_driver_version')}, torch {env.get('torch_version')}, "
            f"transformers {env.get('transformers_version')}"
        )
    dtypes = load(out / "dtypes.json")
    if dtypes:
        print(
            "dtypes: "
            + ", ".join(
                f"{k} {'native' if v['claimed_native'] else 'not native'} / kernel {v['kernel']}"
                for k, v in dtypes["results"].items()
            )
        )
    print()
    print(
        f"{'model':16s} {'est weights':>11s} {'after load':>10s} {'gap':>7s} "
        f"{'est total*':>10s} {'peak':>8s} {'gap':>7s}"
    )
    for path in sorted(out.glob("memory-*.json")):
        r = load(path)
        print(
            f"{r['model']:16s} {r['estimate_weights'] / 1e9:10.2f}G "
            f"{r['measured_after_load'] / 1e9:9.2f}G {r['weights_gap']:+7.1%} "
            f"{r['estimate_total_less_runtime'] / 1e9:9.2f}G {r['measured_peak'] / 1e9:7.2f}G "
            f"{r['peak_gap']:+7.1%}"
        )
    print("* estimate less the runtime overhead, which the allocator does not see")
    runs = [
        load(out / name)
        for name in ("suite-save.json", "suite-compare-1.json", "suite-compare-2.json")
    ]
    runs = [r for r in runs if r]
    if not runs:
        return
    print()
    print(
        f"{'target':16s} {'load s':>7s} {'TTFT ms':>8s} {'prefill/s':>10s} {'decode/s':>9s} "
        f"{'% ceil':>7s} {'spread in':>9s} {'across runs':>11s}"
    )
    first = runs[0]["measurements"]
    for nodeid, entry in first.items():
        if entry["check"] != "throughput":
            continue
        m = entry["metrics"]
        loads = first.get(nodeid.replace("::throughput", "::loads"), {}).get("metrics", {})
        decodes = [
            r["measurements"][nodeid]["metrics"]["decode_tok_s"]
            for r in runs
            if nodeid in r["measurements"]
        ]
        across = (max(decodes) - min(decodes)) / statistics.median(decodes) if decodes else 0
        print(
            f"{entry['target']:16s} {loads.get('load_seconds', 0):7.1f} {m['ttft_ms']:8.1f} "
            f"{m['prefill_tok_s']:10.0f} {m['decode_tok_s']:9.1f} "
            f"{m.get('decode_pct_of_ceiling', 0):6.1f}% {m['decode_tok_s_spread']:8.1%} "
            f"{across:10.1%}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-tier-out"))
