"""All-reduce bandwidth and latency between GPUs, measured the way nccl-tests does it.

``all_reduce_perf`` (github.com/NVIDIA/nccl-tests) times an all-reduce of S bytes over a
sweep of sizes and reports, per size, the time t, the algorithm bandwidth ``algbw = S / t``
and the bus bandwidth ``busbw = algbw * 2 (n - 1) / n`` for n ranks: the rate each link
carries in a ring, comparable across rank counts and with the link's own speed
(docs/PERFORMANCE.md in nccl-tests). Here the same sweep runs with ``torch.distributed``: NCCL
on GPUs (one process per device), gloo on the CPU (the tests of this project). Each size is
warmed up, then timed ``repeats`` times over ``iters`` back-to-back all-reduces with the
device synchronised at both ends; a repeat's time is the slowest rank's, and the median of
the repeats is reported with its spread. Each size's result is also checked for the right
sum, as nccl-tests counts ``#wrong``: a link that loses data must not pass on speed.

Tensor-parallel decode waits for two small all-reduces per layer (a few KiB at batch 1), so
the latency at the smallest size is reported beside the bus bandwidth at the largest: both
are metrics a baseline keeps, and each can have a floor (``min_busbw_gb_s``,
``max_latency_us``). A BIOS or driver change that turns P2P off (ACS, the IOMMU) shows as a
drop of both, and fails here instead of halving decode.

The maths and the verdicts are pure functions; ``run_allreduce`` spawns the ranks as
processes (``python -m pytest_gpufit.allreduce``). torch is imported only in those processes.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.probe import visible_devices
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.numbers import format_number
from pytest_gpufit.units import parse_size, shown

# The metrics a baseline keeps (their direction and label: pytest_gpufit.baseline.compare).
BASELINE_METRICS = ("allreduce_busbw_gb_s", "allreduce_latency_us")
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
MAX_SIZE = 16 * 2**30  # one all-reduce buffer (so a sweep by 2 has at most 35 sizes)
MAX_RANKS = 64
RESULT_TAG = "GPUFIT_ALLREDUCE "


@dataclass(frozen=True)
class AllReduceParams:
    """One all-reduce check: the sweep, how it is timed, and its floors (None: no floor)."""

    min_size: int = 8
    max_size: int = 64 * 2**20
    factor: int = 2
    dtype: str = "fp32"
    warmup: int = 5
    iters: int = 20
    repeats: int = 5
    processes: int = 2  # ranks on the CPU (gloo); on GPUs one rank per device
    backend: str | None = None  # nccl on GPUs, gloo on the CPU
    min_busbw_gb_s: float | None = None
    max_latency_us: float | None = None
    timeout_s: float = 300.0


PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "min_size": {"type": "string", "description": "smallest size, e.g. '8B', '4KiB'"},
        "max_size": {"type": "string", "description": "largest size, e.g. '64MiB'"},
        "factor": {"type": "integer", "minimum": 2, "maximum": 1024},
        "dtype": {"enum": sorted(ELEMENT_BYTES)},
        "warmup": {"type": "integer", "minimum": 0, "maximum": 1000},
        "iters": {"type": "integer", "minimum": 1, "maximum": 10000},
        "repeats": {"type": "integer", "minimum": 1, "maximum": 1000},
        "processes": {"type": "integer", "minimum": 2, "maximum": MAX_RANKS},
        "backend": {"enum": ["nccl", "gloo"]},
        "min_busbw_gb_s": {"type": "number", "exclusiveMinimum": 0},
        "max_latency_us": {"type": "number", "exclusiveMinimum": 0},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
    },
}


# ---- parameters ---------------------------------------------------------------------------


def _whole(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GpufitError(
            f"{what}: expected a whole number from {low} to {high}, got {shown(value)}"
        )
    return value


def _positive(value: Any, what: str, high: float = 1e12) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
        raise GpufitError(
            f"{what}: expected a number above 0 (at most {high:g}), got {shown(value)}"
        )
    return float(value)


def buffer_size(value: Any, what: str) -> int:
    """One all-reduce buffer: a size with its unit, 1 B to 16 GiB.

    >>> buffer_size("4KiB", "min_size")
    4096
    """
    # A bare number would be GB (the house unit), which no one means for an all-reduce buffer;
    # so would the text of one ("8" is 8 GB to parse_size).
    if not isinstance(value, str) or not value.strip()[-1:].isalpha():
        raise GpufitError(
            f"{what}: expected a size with its unit such as '8B' or '64MiB', got {shown(value)}"
        )
    size = parse_size(value, what)
    if not 1 <= size <= MAX_SIZE:
        raise GpufitError(f"{what}: expected 1 B to 16 GiB, got {shown(value)}")
    return size


def parse_params(raw: Mapping[str, Any] | None, where: str = "allreduce") -> AllReduceParams:
    """The check's parameters from a suite mapping; an unknown key or a bad value raises a
    ``GpufitError`` that names ``where.key``.

    >>> p = parse_params({"min_size": "1KiB", "max_size": "1MiB", "min_busbw_gb_s": 20})
    >>> p.min_size, p.max_size, p.min_busbw_gb_s
    (1024, 1048576, 20.0)
    """
    raw = dict(raw or {})
    known = PARAMS_SCHEMA["properties"]
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise GpufitError(f"{where}.{unknown[0]}: unknown key; known: {', '.join(known)}")
    default = AllReduceParams()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        what = f"{where}.{key}"
        if key in ("min_size", "max_size"):
            out[key] = buffer_size(value, what)
        elif key == "factor":
            out[key] = _whole(value, what, 2, 1024)
        elif key == "dtype":
            if value not in ELEMENT_BYTES:
                raise GpufitError(
                    f"{what}: expected one of {', '.join(ELEMENT_BYTES)}, got {shown(value)}"
                )
            out[key] = value
        elif key in ("warmup", "iters", "repeats", "processes"):
            bounds = {"warmup": (0, 1000), "iters": (1, 10000), "repeats": (1, 1000)}
            low, high = bounds.get(key, (2, MAX_RANKS))
            out[key] = _whole(value, what, low, high)
        elif key == "backend":
            if value not in ("nccl", "gloo"):
                raise GpufitError(f"{what}: expected nccl or gloo, got {shown(value)}")
            out[key] = value
        elif key == "timeout_s":
            out[key] = _positive(value, what, 3600)
        else:  # the floors
            out[key] = _positive(value, what)
    params = AllReduceParams(**{**asdict(default), **out})
    try:
        check_sweep(params)
    except GpufitError as error:
        raise GpufitError(f"{where}.{error}") from None
    return params


def check_sweep(params: AllReduceParams) -> AllReduceParams:
    """The rules between fields: a sweep that goes up, to at least one element; the error
    starts with the field it names.

    >>> check_sweep(AllReduceParams(min_size=2**20, max_size=2**10))
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: min_size: 1 MiB is above max_size 1 KiB
    """
    if params.min_size > params.max_size:
        raise GpufitError(
            f"min_size: {format_size(params.min_size)} is above max_size "
            f"{format_size(params.max_size)}"
        )
    element = ELEMENT_BYTES[params.dtype]
    if params.max_size < element:
        raise GpufitError(f"max_size: below one {params.dtype} element ({element} B)")
    return params


# ---- the maths (pure) ---------------------------------------------------------------------


def sweep_sizes(min_size: int, max_size: int, factor: int, element: int) -> list[int]:
    """Sizes from ``min_size`` to ``max_size``, each ``factor`` times the last, rounded down
    to whole elements (at least one), as ``all_reduce_perf -b -e -f`` steps.

    >>> sweep_sizes(8, 64, 2, 4)
    [8, 16, 32, 64]
    >>> sweep_sizes(1, 16, 4, 4)  # 1 B is below one element: 4 B, then 4 B again, then 16 B
    [4, 16]
    """
    sizes: list[int] = []
    size = min_size
    while size <= max_size:
        rounded = max(element, size // element * element)
        if not sizes or rounded != sizes[-1]:
            sizes.append(rounded)
        size *= factor
    return sizes


def algorithm_bandwidth(size_bytes: int, seconds: float) -> float:
    """``algbw``: bytes reduced per second, in GB/s (10^9), as nccl-tests prints it.

    >>> algorithm_bandwidth(33554432, 2275.1e-6)
    14.748...
    """
    return size_bytes / seconds / 1e9


def bus_bandwidth(algbw: float, ranks: int) -> float:
    """``busbw = algbw * 2 (n - 1) / n``: what each link of a ring carries (nccl-tests).

    >>> round(bus_bandwidth(14.75, 6), 2)  # tinygrad's 6x RTX 4090 all_reduce_perf line
    24.58
    >>> bus_bandwidth(10.0, 2)
    10.0
    """
    return algbw * 2 * (ranks - 1) / ranks


def relative_spread(values: Sequence[float]) -> float:
    """(max - min) / median of repeated timings; 0 for one.

    >>> relative_spread([1.0, 1.1, 0.9])
    0.2...
    """
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


@dataclass(frozen=True)
class SizeResult:
    """One size of the sweep: the slowest rank's seconds per all-reduce, per repeat."""

    size_bytes: int
    runs_s: tuple[float, ...]
    wrong: int = 0  # elements that did not hold the expected sum

    @property
    def seconds(self) -> float:
        return float(statistics.median(self.runs_s))

    @property
    def spread(self) -> float:
        return relative_spread(self.runs_s)


@dataclass(frozen=True)
class AllReduceResult:
    """A measured sweep: what ran (backend, ranks, dtype, devices) and each size."""

    backend: str
    ranks: int
    dtype: str
    sizes: tuple[SizeResult, ...]
    devices: tuple[str, ...] = ()  # GPU labels; empty on the CPU
    params: Mapping[str, Any] = field(default_factory=dict)

    def algbw(self, size: SizeResult) -> float:
        return algorithm_bandwidth(size.size_bytes, size.seconds)

    def busbw(self, size: SizeResult) -> float:
        return bus_bandwidth(self.algbw(size), self.ranks)

    def metrics(self) -> dict[str, Any]:
        """The figures a check records: the baseline metrics (bus bandwidth at the largest
        size, latency at the smallest) with their spreads, and the whole sweep."""
        small, large = self.sizes[0], self.sizes[-1]
        return {
            "allreduce_busbw_gb_s": self.busbw(large),
            "allreduce_busbw_gb_s_spread": large.spread,
            "allreduce_latency_us": small.seconds * 1e6,
            "allreduce_latency_us_spread": small.spread,
            "allreduce_busbw_size_bytes": large.size_bytes,
            "allreduce_latency_size_bytes": small.size_bytes,
            # nccl-tests' "Avg bus bandwidth": the mean over the sweep.
            "allreduce_avg_busbw_gb_s": statistics.fmean(self.busbw(s) for s in self.sizes),
            "allreduce_backend": self.backend,
            "allreduce_ranks": self.ranks,
            "allreduce_dtype": self.dtype,
            "allreduce_devices": list(self.devices),
            "allreduce_sweep": [
                {
                    "size_bytes": s.size_bytes,
                    "time_us": s.seconds * 1e6,
                    "algbw_gb_s": self.algbw(s),
                    "busbw_gb_s": self.busbw(s),
                    "spread": s.spread,
                    "wrong": s.wrong,
                }
                for s in self.sizes
            ],
        }

    def table(self) -> str:
        """The sweep as ``all_reduce_perf`` prints it (in place: torch reduces in place)."""
        head = f"# {self.backend}, {self.ranks} ranks, {self.dtype}" + (
            f", {', '.join(self.devices)}" if self.devices else ""
        )
        lines = [
            head,
            f"#{'size':>12} {'time us':>10} {'algbw':>8} {'busbw':>8} {'spread':>7} #wrong",
        ]
        for s in self.sizes:
            lines.append(
                f"{format_size(s.size_bytes):>13} {s.seconds * 1e6:>10.2f} {self.algbw(s):>8.2f} "
                f"{self.busbw(s):>8.2f} {s.spread:>6.1%} {s.wrong:>6}"
            )
        return "\n".join(lines)


def format_size(n_bytes: int) -> str:
    """``8 B``, ``4 KiB``, ``64 MiB``: the binary units all-reduce sweeps are written in.

    >>> format_size(8), format_size(4096), format_size(3 * 2**20 // 2)
    ('8 B', '4 KiB', '1.5 MiB')
    """
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= factor:
            return f"{format_number(n_bytes / factor)} {unit}"
    return f"{n_bytes} B"


def floor_failures(result: AllReduceResult, params: AllReduceParams) -> list[str]:
    """What the sweep broke: a wrong sum at any size, and each floor it fell through.

    >>> sweep = (SizeResult(8, (40e-6,)), SizeResult(2**26, (0.02,)))
    >>> result = AllReduceResult("nccl", 2, "fp32", sweep)
    >>> for line in floor_failures(result, AllReduceParams(min_busbw_gb_s=20, max_latency_us=30)):
    ...     print(line)
    all-reduce bus bandwidth 3.36 GB/s at 64 MiB is below the floor of 20 GB/s (nccl, 2 ranks, fp32)
    all-reduce latency 40 us at 8 B is above the ceiling of 30 us (nccl, 2 ranks, fp32)
    """
    what = f"({result.backend}, {result.ranks} ranks, {result.dtype})"
    out = []
    wrong = [s for s in result.sizes if s.wrong]
    if wrong:
        sizes = ", ".join(format_size(s.size_bytes) for s in wrong)
        out.append(f"all-reduce returned wrong sums at {sizes} {what}: the link corrupts data")
    metrics = result.metrics()
    busbw, latency = metrics["allreduce_busbw_gb_s"], metrics["allreduce_latency_us"]
    large, small = result.sizes[-1].size_bytes, result.sizes[0].size_bytes
    if params.min_busbw_gb_s is not None and busbw < params.min_busbw_gb_s:
        out.append(
            f"all-reduce bus bandwidth {format_number(busbw)} GB/s at {format_size(large)} is "
            f"below the floor of {format_number(params.min_busbw_gb_s)} GB/s {what}"
        )
    if params.max_latency_us is not None and latency > params.max_latency_us:
        out.append(
            f"all-reduce latency {format_number(latency)} us at {format_size(small)} is above "
            f"the ceiling of {format_number(params.max_latency_us)} us {what}"
        )
    return out


# ---- the runner ---------------------------------------------------------------------------


def run_allreduce(
    params: Mapping[str, Any] | None, devices: Sequence[Gpu]
) -> tuple[dict[str, Any], list[str]]:
    """Measure the all-reduce sweep on ``devices`` (one rank each, NCCL) or, with none, on
    the CPU (``processes`` ranks, gloo): the metrics, and the failures (floors, wrong sums).

    Raises ``GpufitError`` for bad parameters, simulated cards, fewer than two devices, or a
    rank that fails or outlives ``timeout_s`` (its message carries the rank's last output).
    """
    options = parse_params(params)
    result = measure(options, devices)
    return result.metrics(), floor_failures(result, options)


def measure(params: AllReduceParams, devices: Sequence[Gpu]) -> AllReduceResult:
    """Spawn the ranks and collect rank 0's sweep."""
    if any(g.simulated for g in devices):
        raise GpufitError("allreduce: simulated cards cannot be measured (simulation plans only)")
    if devices and len(devices) < 2:
        raise GpufitError(f"allreduce: needs 2 or more GPUs, got {len(devices)}")
    ranks = len(devices) or params.processes
    backend = params.backend or ("nccl" if devices else "gloo")
    element = ELEMENT_BYTES[params.dtype]
    config = {
        "backend": backend,
        "cuda": bool(devices),
        "dtype": params.dtype,
        "sizes": sweep_sizes(params.min_size, params.max_size, params.factor, element),
        "warmup": params.warmup,
        "iters": params.iters,
        "repeats": params.repeats,
    }
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    if devices:
        outer = os.environ.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(devices, [g.index for g in devices], outer)
    with tempfile.TemporaryDirectory(prefix="gpufit-allreduce-") as folder:
        config["store"] = str(Path(folder) / "store")
        outputs = _run_ranks(ranks, config, env, params.timeout_s, Path(folder))
    line = next((x for x in outputs[0].splitlines() if x.startswith(RESULT_TAG)), None)
    if line is None:
        raise GpufitError(
            f"allreduce: rank 0 gave no result; its output ended: {_tail(outputs[0])}"
        )
    data = json.loads(line[len(RESULT_TAG) :])
    sizes = tuple(
        SizeResult(int(s["size_bytes"]), tuple(float(t) for t in s["runs_s"]), int(s["wrong"]))
        for s in data["sizes"]
    )
    return AllReduceResult(
        backend, ranks, params.dtype, sizes, tuple(g.label for g in devices), asdict(params)
    )


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(nothing)"


def _run_ranks(
    ranks: int, config: Mapping[str, Any], env: Mapping[str, str], timeout_s: float, folder: Path
) -> list[str]:
    """Start every rank, wait for all (at most ``timeout_s``), and return each one's output.
    A rank that fails or hangs stops the others: a collective waits for all of them."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for rank in range(ranks):
            log = folder / f"rank{rank}.log"
            with log.open("wb") as out:
                child = {**env, "RANK": str(rank), "WORLD_SIZE": str(ranks)}
                procs.append(
                    (
                        subprocess.Popen(
                            [sys.executable, "-m", "pytest_gpufit.allreduce", json.dumps(config)],
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            env=child,
                            start_new_session=True,  # its own group: stopped with its children
                        ),
                        log,
                    )
                )
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p, _ in procs):
            failed = [(n, p) for n, (p, _) in enumerate(procs) if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        outputs = [log.read_text("utf-8", "replace") for _, log in procs]
        for rank, (proc, _) in enumerate(procs):  # a failed rank is the cause; report it first
            if proc.returncode not in (None, 0):
                raise GpufitError(
                    f"allreduce: rank {rank} of {ranks} exited with {proc.returncode}; its "
                    f"output ended: {_tail(outputs[rank])}"
                )
        for rank, (proc, _) in enumerate(procs):
            if proc.poll() is None:
                raise GpufitError(
                    f"allreduce: rank {rank} of {ranks} did not finish within {timeout_s:g} s "
                    f"(a hung collective: P2P or the network between ranks); its output ended: "
                    f"{_tail(outputs[rank])}"
                )
        return outputs
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


# ---- one rank (runs in its own process) ---------------------------------------------------


def _rank_main(config: Mapping[str, Any]) -> None:
    """Time the sweep as one rank; rank 0 prints the result line."""
    # late: only the rank processes pay for torch
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = bool(config["cuda"])
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit(f"torch {torch.__version__} has no CUDA device here")
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        str(config["backend"]), init_method=f"file://{config['store']}", rank=rank, world_size=world
    )
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config["dtype"]]
    element = ELEMENT_BYTES[str(config["dtype"])]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    sizes = []
    for size in config["sizes"]:
        data = torch.zeros(int(size) // element, dtype=dtype, device=device)
        for _ in range(int(config["warmup"])):
            dist.all_reduce(data)
        runs = []
        for _ in range(int(config["repeats"])):
            dist.barrier()
            sync()
            start = time.perf_counter()
            for _ in range(int(config["iters"])):
                dist.all_reduce(data)
            sync()
            seconds = (time.perf_counter() - start) / int(config["iters"])
            took = torch.tensor([seconds], dtype=torch.float64, device=device)
            dist.all_reduce(took, op=dist.ReduceOp.MAX)  # the collective ends with its slowest rank
            runs.append(float(took.item()))
        # Check the sum, as nccl-tests counts #wrong: rank r gives r + 1, all get n (n + 1) / 2.
        data.fill_(rank + 1)
        dist.all_reduce(data)
        wrong = torch.tensor([int((data != world * (world + 1) // 2).sum().item())], device=device)
        dist.all_reduce(wrong)
        sizes.append({"size_bytes": int(size), "runs_s": runs, "wrong": int(wrong.item())})
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print(RESULT_TAG + json.dumps({"sizes": sizes}), flush=True)


if __name__ == "__main__":
    _rank_main(json.loads(sys.argv[1]))
