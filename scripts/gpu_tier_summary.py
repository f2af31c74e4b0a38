"""Print the GPU tier's short table from the JSON files scripts/gpu-tier.sh wrote.

    python scripts/gpu_tier_summary.py OUT_DIR [--bundle FILE | --ab]

``--bundle FILE`` instead packs every result under OUT_DIR into one JSON file (what comes back
from the device, which returns few files), with the tail of the served target's log.
``--ab`` prints only the A/B step's section (ab.json, ab-env.json) and exits 1 where the step
fails: no A/B result; NO EVIDENCE (a metric lost, a metric without an interval); or a FALSE
ALARM, an A/A (B holding A's very packages) whose metric, outcome or verdict reads as a change.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from pytest_gpufit.ab.output import changed
from pytest_gpufit.metrics import label

# Files the bundle skips: checkpoints and other bulk the tier writes under OUT_DIR.
BUNDLE_SKIP = {".safetensors", ".bin", ".pt"}
BUNDLE_MAX_BYTES = 2_000_000
# Folders the bundle skips: side B's venv of the A/B step (a transformers wheel's thousands of
# files), the checkpoints.
BUNDLE_SKIP_DIRS = {"ab-venv"}


def load(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def gb(value: float | None) -> str:
    return f"{value / 1e9:.2f}G" if value is not None else "-"


def card(out: Path) -> None:
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
    if not probe.get("gpus"):
        print("card: none (no GPU seen by the probe)")
    dtypes = load(out / "dtypes.json")
    if dtypes:
        print(
            "dtypes: "
            + ", ".join(
                f"{k} {'native' if v['claimed_native'] else 'not native'} / kernel {v['kernel']}"
                for k, v in dtypes["results"].items()
            )
        )


def fit_total(out: Path, model: str, engine: bool = False) -> int | None:
    """``gpufit fit MODEL --json``'s predicted total (the engine-aware one with ``engine``)."""
    data = load(out / f"fit-{'engine-' if engine else ''}{model}.json")
    value = data.get("total_bytes") if isinstance(data, dict) else None
    return int(value) if isinstance(value, (int, float)) else None


def memory(out: Path) -> None:
    rows = [load(p) for p in sorted(out.glob("memory-*.json"))]
    if not rows:
        return
    print()
    print(
        f"{'model':16s} {'est weights':>11s} {'after load':>10s} {'gap':>7s} "
        f"{'est total*':>10s} {'peak':>8s} {'gap':>7s} {'reserved':>8s} {'fit':>8s} "
        f"{'fit eng':>8s}"
    )
    for r in rows:
        engine = fit_total(out, r["model"], engine=True)
        reserved = r.get("measured_reserved")
        print(
            f"{r['model']:16s} {r['estimate_weights'] / 1e9:10.2f}G "
            f"{r['measured_after_load'] / 1e9:9.2f}G {r['weights_gap']:+7.1%} "
            f"{r['estimate_total_less_runtime'] / 1e9:9.2f}G {r['measured_peak'] / 1e9:7.2f}G "
            f"{r['peak_gap']:+7.1%} {gb(reserved):>8s} {gb(fit_total(out, r['model'])):>8s} "
            f"{gb(engine):>8s}"
        )
    print("* estimate less the runtime overhead, which the allocator does not see;")
    print("  fit = `gpufit fit MODEL --context 4096 --json` total (CUDA context included),")
    print("  fit eng = the same with --engine transformers (where this gpufit has it); fit totals")
    print("  count the CUDA context, 'peak' and 'reserved' (torch's allocator) do not")


def suites(out: Path) -> None:
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


def served_peak(out: Path) -> int | None:
    """The card's peak memory in use while the server ran, less what was in use before it."""
    path = out / "serve-memory.csv"
    if not path.exists():
        return None
    mib = [int(x) for x in path.read_text().split() if x.strip().isdigit()]
    return (max(mib) - mib[0]) * 2**20 if mib else None


def serve(out: Path) -> None:
    report = load(out / "suite-serve.json")
    if not report:
        return
    outcomes = {
        nodeid: (v.get("outcome") if isinstance(v, dict) else v)
        for nodeid, v in (report.get("results") or {}).items()
    }
    print()
    order = {"serves": 0, "fits": 1, "throughput": 2, "load": 3}
    entries = sorted(
        report["measurements"].values(),
        key=lambda e: (str(e.get("target")), order.get(str(e.get("check")), 9)),
    )
    for entry in entries:
        m = entry["metrics"]
        check = entry["check"]
        if check == "serves":
            print(
                f"serve {entry['target']}: engine {m.get('engine')}, ready in "
                f"{m.get('startup_seconds', 0):.1f} s, model {m.get('served_model')}"
            )
        elif check == "throughput":
            print(
                f"  throughput: TTFT {m['ttft_ms']:.1f} ms (spread {m['ttft_ms_spread']:.1%}), "
                f"prefill {m['prefill_tok_s']:.0f} tok/s, decode {m['decode_tok_s']:.1f} tok/s "
                f"(spread {m['decode_tok_s_spread']:.1%}), ITL p99 {m['itl_ms_p99']:.1f} ms"
            )
        elif check == "load":
            for name, level in (m.get("levels") or {}).items():
                print(
                    f"  load {name}: {level['completed']:.0f} ok, {level['failed']:.0f} failed, "
                    f"{level['request_throughput']:.2f} req/s, "
                    f"{level['output_throughput']:.1f} tok/s, TTFT p50/p99 "
                    f"{level.get('median_ttft_ms', 0):.1f}/{level.get('p99_ttft_ms', 0):.1f} ms, "
                    f"TPOT p50 {level.get('median_tpot_ms', 0):.2f} ms, "
                    f"goodput {level['goodput']:.0%}"
                )
    failed = sorted(k for k, v in outcomes.items() if v != "passed")
    if failed:
        print(f"  NOT PASSED: {', '.join(failed)}")
    elif not outcomes:
        print("  NOT PASSED: the report holds no results")
    peak = served_peak(out)
    if peak is not None:
        fit, engine = fit_total(out, "qwen3-0.6b"), fit_total(out, "qwen3-0.6b", engine=True)
        print(
            f"  server's peak on the card (nvidia-smi, less the memory in use before it): "
            f"{gb(peak)}; fit {gb(fit)}, fit --engine transformers {gb(engine)}"
        )


def allreduce(out: Path) -> None:
    """The all-reduce sweep (benchmarks/allreduce_sweep.py --json) and the gated link suite."""
    data = load(out / "allreduce.json")
    if not isinstance(data, dict):
        text = out / "allreduce.txt"
        if text.exists():  # "not run (1 GPU ...)", or a sweep that failed before its JSON
            print()
            print("all-reduce: " + " | ".join(text.read_text().strip().splitlines()[-3:]))
        return
    m = data.get("metrics") or {}
    print()
    print(
        f"all-reduce {m.get('allreduce_backend')}, {m.get('allreduce_ranks')} ranks, "
        f"{m.get('allreduce_dtype')}: bus bandwidth {m.get('allreduce_busbw_gb_s', 0):.2f} GB/s "
        f"at {m.get('allreduce_busbw_size_bytes')} B (spread "
        f"{m.get('allreduce_busbw_gb_s_spread', 0):.1%}), latency "
        f"{m.get('allreduce_latency_us', 0):.1f} us at {m.get('allreduce_latency_size_bytes')} B "
        f"(spread {m.get('allreduce_latency_us_spread', 0):.1%}), nccl-tests avg busbw "
        f"{m.get('allreduce_avg_busbw_gb_s', 0):.2f} GB/s"
    )
    for link in data.get("links") or []:
        print(
            f"  link GPU{link.get('a')}-GPU{link.get('b')}: topology {link.get('topology')}, "
            f"P2P read {link.get('p2p_read')}, write {link.get('p2p_write')}, "
            f"NVLink {link.get('p2p_nvlink')}"
        )
    report = load(out / "suite-allreduce.json")
    if isinstance(report, dict):
        outcomes = {
            nodeid: (v.get("outcome") if isinstance(v, dict) else v)
            for nodeid, v in (report.get("results") or {}).items()
        }
        failed = sorted(k for k, v in outcomes.items() if v != "passed")
        print(f"  gated suite: {'NOT PASSED: ' + ', '.join(failed) if failed else 'passed'}")


def ab_kind(data: dict[str, Any]) -> tuple[str, list[str]]:
    """``A/A`` or ``A/B`` from what the two sides really held (gpufit ab's fingerprints), with
    what differs.

    >>> ab_kind({"a": {"fingerprint": {"packages": {"x": "1"}}},
    ...          "b": {"fingerprint": {"packages": {"x": "1"}}}})
    ('A/A', [])
    >>> ab_kind({"a": {"fingerprint": {"transformers_version": "5.25.0"}},
    ...          "b": {"fingerprint": {"transformers_version": "5.24.0"}}})
    ('A/B', ['transformers 5.25.0 -> 5.24.0'])
    """
    a = (data.get("a") or {}).get("fingerprint") or {}
    b = (data.get("b") or {}).get("fingerprint") or {}
    changes = changed(a, b)
    return ("A/B" if changes else "A/A"), changes


def _short(entry: Any) -> str:
    """A test's name without its file: ``ab.gpufit.yaml::x::throughput`` -> ``x::throughput``."""
    return str(entry.get("test", "")).split("::", 1)[-1]


def ab_lines(data: Any, env: Any = None) -> tuple[list[str], bool]:
    """The A/B step's lines, and whether the step fails: a FALSE ALARM (an A/A whose metric,
    verdict or test outcome reads as a change: nothing changed, so only noise or a broken
    instrument says so), or a result that is no evidence (a metric a side lost, a metric
    without an interval). An A/B's regressions and failing tests are findings, printed.
    No result at all (the step failed before ``gpufit ab`` wrote its JSON) is a line too."""
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
        return ["A/B: no result (ab.json is missing or unreadable; see ab.txt)"], False
    kind, changes = ab_kind(data)
    what = (
        "the same packages on both sides (B is a venv onto A's): the noise alone, where any "
        "verdict but same or inconclusive is a false alarm"
        if kind == "A/A"
        else ", ".join(changes)
    )
    lines = [
        f"A/B ({kind}): {what}",
        f"  {data.get('rounds')} of at most {data.get('max_rounds')} rounds, "
        f"{float(data.get('seconds') or 0):.0f} s; A {(data.get('a') or {}).get('python')}, "
        f"B {(data.get('b') or {}).get('python')}",
    ]
    planned = env.get("kind") if isinstance(env, dict) else None
    if planned and planned != kind:
        lines.append(f"  note: side B was made as an {planned}, gpufit ab measured an {kind}")
    alarm = False
    for m in data["metrics"]:
        test = _short(m)
        if m.get("low") is not None and m.get("high") is not None:
            shown = f"[{m['low']:.3f}, {m['high']:.3f}] at {float(m.get('confidence', 0)):.1%}"
        else:
            shown = "no interval (too few rounds)"
        flag = ""
        if kind == "A/A" and m.get("verdict") in ("regressed", "improved"):
            alarm = True
            flag = "  FALSE ALARM (an A/A)"
        lines.append(
            f"  {test:24s} {label(str(m.get('metric'))):14s} B/A {float(m.get('ratio', 0)):.3f} "
            f"{shown:28s} {m.get('verdict')}{flag}"
        )
    texts = data.get("texts") or []
    for t in texts:
        lines.append(
            f"  greedy text {_short(t)}: equal in {t.get('equal_pairs')} of {t.get('pairs')} pairs"
        )
    if not texts:
        lines.append("  greedy text: none recorded (no check of the suite records its text)")
    no_evidence = []
    for x in data.get("lost") or []:
        lines.append(
            f"  metric lost: {_short(x)} {x.get('metric')} on "
            f"side {x.get('side')} from round {x.get('missing_from')}"
        )
        no_evidence.append("a metric was lost")
    if not data["metrics"] or any(m.get("low") is None for m in data["metrics"]):
        no_evidence.append("a metric has no interval (6 rounds give the first)")
    for d in data.get("outcomes") or []:
        lines.append(
            f"  outcomes differ: {_short(d)}: A {d.get('a')}, "
            f"B {d.get('b')}{'  FALSE ALARM (an A/A)' if kind == 'A/A' else ''}"
        )
        alarm = alarm or kind == "A/A"
    if kind == "A/A" and data.get("verdict") in ("regressed", "improved"):
        alarm = True
    lines.append(f"  verdict: {data.get('verdict')} (gpufit ab exit {data.get('exit_code')})")
    if alarm:
        lines.append(
            "  FALSE ALARM: B holds A's very packages, yet gpufit ab judged a change; the "
            "machine moved under one side or the statistics erred (the step fails)"
        )
    if no_evidence:
        lines.append(f"  NO EVIDENCE: {'; '.join(dict.fromkeys(no_evidence))} (the step fails)")
    return lines, alarm or bool(no_evidence)


def ab(out: Path, check: bool = False) -> int:
    """Print the A/B section where the step ran (or ``check``: always); 1 where it failed."""
    data, env = load(out / "ab.json"), load(out / "ab-env.json")
    if data is None and env is None and not check:
        return 0
    lines, fails = ab_lines(data, env)
    print()
    print("\n".join(lines))
    return 1 if fails or not isinstance(data, dict) else 0


def bundle(out: Path, target: Path) -> None:
    """Every result under ``out`` in one JSON file, keyed by its path relative to ``out``."""
    files: dict[str, Any] = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path == target or path.suffix in BUNDLE_SKIP:
            continue
        if "serve-model" in path.parts[-2] or path.stat().st_size > BUNDLE_MAX_BYTES:
            continue
        if BUNDLE_SKIP_DIRS & set(path.relative_to(out).parts[:-1]):
            continue
        text = path.read_text(errors="replace")
        try:
            files[str(path.relative_to(out))] = json.loads(text) if path.suffix == ".json" else text
        except ValueError:
            files[str(path.relative_to(out))] = text
    report = load(out / "suite-serve.json") or {}
    for entry in (report.get("measurements") or {}).values():
        log = Path(str(entry.get("metrics", {}).get("server_log", "")))
        if log.name and log.is_file() and f"server-log/{log.name}" not in files:
            files[f"server-log/{log.name}"] = "\n".join(log.read_text().splitlines()[-300:])
    target.write_text(json.dumps(files, indent=1, default=str))
    print(f"bundle: {target} ({len(files)} files, {target.stat().st_size / 1e6:.2f} MB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("gpu-tier-out"))
    parser.add_argument("--bundle", type=Path, help="pack every result into this JSON file")
    parser.add_argument(
        "--ab", action="store_true", help="the A/B section only; exit 1 where the step fails"
    )
    args = parser.parse_args()
    if args.bundle:
        bundle(args.out, args.bundle)
        return 0
    if args.ab:
        return ab(args.out, check=True)
    card(args.out)
    memory(args.out)
    suites(args.out)
    serve(args.out)
    allreduce(args.out)
    ab(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
