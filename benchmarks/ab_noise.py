"""gpufit ab on this machine's noise: false alarms at no change, detections of a 10% slowdown,
beside the same data judged by today's single-sample baseline compare (issue 20).

Builds three uv venvs holding slowpkg (tests/ab_envs.py): v1, a copy of v1, and v2 whose busy
loop is ``--slowdown`` longer (10%: B/A = 1/1.1 = 0.909). The target is a plain pytest test
timing slowpkg by wall clock (``--clock wall``, perf_counter: every neighbour on the box
counts, as every neighbour on a card counts in a GPU timer) or by CPU time (``--clock cpu``,
process_time: the scheduler's turns for other jobs do not count, the rest of the machine's
noise does: caches, frequency, the other core's load on shared resources). Then, alternately,
``gpufit ab`` of v1 against its copy (no change) and of v1 against v2 (the slowdown),
``--reps`` times each, default tolerance (5%) and ``--rounds`` (20). Each result is appended
to ``--out`` (JSON lines) as it comes, so a run stopped early keeps what it measured.

The single-sample baseline compare is today's ``--gpufit-baseline=compare``: the accepted
baseline is one run of A, the new run one run of B, judged by ``baseline.compare.judge`` with
the same 5% tolerance; "+confirm 2" is its confirmation (``baseline: {confirm: 2}``): a
regression stands only if the next two runs of B are also worse than A's run. Both are read
from the first rounds of the same gpufit ab runs (round 1's A and B, rounds 2-3's B).

    python benchmarks/ab_noise.py [--reps 40] [--rounds 20] [--slowdown 0.10] [--clock wall|cpu]
        [--out F]
    python benchmarks/ab_noise.py --summary F   # the table of a finished (or stopped) run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ab_envs import TARGET, WALL_TARGET, build_wheel, make_venv  # noqa: E402

from pytest_gpufit.baseline.compare import judge  # noqa: E402

GPUFIT = str(Path(sys.executable).with_name("gpufit"))


def single_sample(a: list[float], b: list[float], tolerance: float) -> tuple[bool, bool]:
    """(regression by one baseline run against one new run, the same confirmed by the next
    two runs of B) on a rate (higher is better)."""
    first = judge("decode_tok_s", a[0], [b[0]], tolerance).verdict == "worse"
    confirmed = first and all(
        judge("decode_tok_s", a[0], [x], tolerance).verdict == "worse" for x in b[1:3]
    )
    return first, confirmed


def one(project: Path, a: Path, b: Path, rounds: int, out: Path) -> dict[str, object]:
    began = time.monotonic()
    done = subprocess.run(
        [GPUFIT, "ab", "--a", f"python={a}", "--b", f"python={b}", "--rounds", str(rounds)]
        + ["--json", str(out), "--", "test_speed.py"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    if done.returncode == 2:
        raise SystemExit(done.stderr)
    data = json.loads(out.read_text())
    (entry,) = data["metrics"]
    return {
        "verdict": entry["verdict"],
        "rounds": data["rounds"],
        "ratio": entry["ratio"],
        "low": entry["low"],
        "high": entry["high"],
        "a": entry["a"],
        "b": entry["b"],
        "seconds": round(time.monotonic() - began, 1),
    }


def summary(path: Path, tolerance: float) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(f"{len(rows)} gpufit ab runs in {path}")
    for case in ("no change", "slowdown"):
        runs = [r for r in rows if r["case"] == case]
        if not runs:
            continue
        n = len(runs)
        words = {w: sum(r["verdict"] == w for r in runs) for w in ("regressed", "same")}
        words["other"] = n - sum(words.values())
        single = [single_sample(r["a"], r["b"], tolerance) for r in runs if len(r["b"]) >= 3]
        hits = sum(s[0] for s in single)
        confirmed = sum(s[1] for s in single)
        rounds = [r["rounds"] for r in runs]
        seconds = [r["seconds"] for r in runs]
        print(
            f"{case}: {n} runs; gpufit ab: regressed {words['regressed']}/{n} "
            f"({words['regressed'] / n:.0%}), same {words['same']}/{n}, inconclusive/improved "
            f"{words['other']}/{n}; rounds median {statistics.median(rounds):g} "
            f"(min {min(rounds)}, max {max(rounds)}), {statistics.median(seconds):.0f} s "
            f"median per run"
        )
        m = len(single)
        if m:
            print(
                f"  single-sample baseline compare on the same data: regression {hits}/{m} "
                f"({hits / m:.0%}); with confirm 2: {confirmed}/{m} ({confirmed / m:.0%})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--slowdown", type=float, default=0.10)
    parser.add_argument("--out", type=Path, default=Path("ab_noise.jsonl"))
    parser.add_argument("--summary", type=Path, help="print the table of an --out file")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the target times slowpkg by: wall (perf_counter: every neighbour counts) "
        "or cpu (process_time: the scheduler's turns for other jobs do not)",
    )
    args = parser.parse_args()
    if args.summary:
        summary(args.summary, args.tolerance)
        return
    with tempfile.TemporaryDirectory(prefix="ab-noise-") as tmp:
        root = Path(tmp)
        wheels = root / "wheels"
        build_wheel(wheels, "1.0", 1.0)
        build_wheel(wheels, "2.0", 1.0 + args.slowdown)
        v1 = make_venv(root / "v1", wheels, "1.0")
        copy = make_venv(root / "v1-copy", wheels, "1.0")
        v2 = make_venv(root / "v2", wheels, "2.0")
        project = root / "project"
        project.mkdir()
        (project / "test_speed.py").write_text(WALL_TARGET if args.clock == "wall" else TARGET)
        for rep in range(args.reps):
            for case, b in (("no change", copy), ("slowdown", v2)):
                row = one(project, v1, b, args.rounds, root / "ab.json")
                row.update(case=case, rep=rep)
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(
                    f"rep {rep} {case}: {row['verdict']} after {row['rounds']} rounds, "
                    f"ratio {row['ratio']:.3f} [{row['low']}, {row['high']}], {row['seconds']} s",
                    flush=True,
                )
    summary(args.out, args.tolerance)


if __name__ == "__main__":
    main()
