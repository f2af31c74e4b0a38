"""Baselines keyed by environment: store measured runs per GPU model, compare after upgrades.

Layout of the store (``--gpufit-baseline-dir``, default ``.gpufit/baselines``)::

    <gpu-model-slug>/runs/<run-id>.json   one record per run (format FORMAT)
    <gpu-model-slug>/accepted             the id of the accepted run

Writes are atomic (a temporary file, then ``os.replace``); a corrupt or unreadable file is an
error naming it, never a silent pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.records import Environment, Gpu
from pytest_gpufit.units import parse_percent

FORMAT = 1
MODES = ("off", "compare", "save")
# metric -> True when higher is better
METRICS: dict[str, bool] = {
    "decode_tok_s": True,
    "prefill_tok_s": True,
    "ttft_ms": False,
    "load_seconds": False,
    "peak_memory": False,
    "kl": False,
    "top1_agreement": True,
}
_METRIC_SOURCES = {"peak_memory": "peak_allocated_bytes"}
_FLOORS = {"kl": 1e-3}
METRIC_LABELS = {
    "decode_tok_s": "decode tok/s",
    "prefill_tok_s": "prefill tok/s",
    "ttft_ms": "TTFT ms",
    "load_seconds": "load s",
    "peak_memory": "peak memory",
    "kl": "KL",
    "top1_agreement": "top-1 agreement",
}


@dataclass(frozen=True)
class Fingerprint:
    """What a measurement depends on, besides the model and the suite."""

    gpu_name: str
    gpu_memory_bytes: int | None
    driver_version: str | None
    cuda_driver_version: str | None
    cuda_runtime_version: str | None
    torch_version: str | None
    transformers_version: str | None
    python_version: str | None
    git_commit: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DIFF_FIELDS = (
    ("driver_version", "driver"),
    ("cuda_driver_version", "CUDA driver"),
    ("cuda_runtime_version", "CUDA runtime"),
    ("torch_version", "torch"),
    ("transformers_version", "transformers"),
    ("python_version", "python"),
    ("gpu_memory_bytes", "GPU memory"),
)


def fingerprint(gpu: Gpu | None, env: Environment, root: Path | None = None) -> Fingerprint:
    return Fingerprint(
        gpu_name=gpu.name if gpu else "cpu",
        gpu_memory_bytes=gpu.memory_total_bytes if gpu else None,
        driver_version=env.driver_version,
        cuda_driver_version=env.cuda_driver_version,
        cuda_runtime_version=env.cuda_runtime_version,
        torch_version=env.torch_version,
        transformers_version=env.transformers_version,
        python_version=env.python_version,
        git_commit=git_commit(root),
    )


def git_commit(root: Path | None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``['driver 550.54.15 -> 560.35.03', 'torch 2.5.1 -> 2.6.0']``."""
    return [
        f"{label} {old.get(key)} -> {new.get(key)}"
        for key, label in _DIFF_FIELDS
        if old.get(key) != new.get(key)
    ]


def slug(name: str) -> str:
    """A folder name for a GPU model.

    >>> slug("NVIDIA H100 80GB HBM3")
    'nvidia-h100-80gb-hbm3'
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def parse_tolerances(raw: Any, where: str) -> dict[str, float]:
    """``{decode_tok_s: 5%, ...}`` -> fractions; unknown metrics and bare numbers are errors."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise GpufitError(f"{where}: expected a mapping of metric: percentage, got {raw!r}")
    out = {}
    for metric, value in raw.items():
        if metric not in METRICS:
            raise GpufitError(f"{where}: unknown metric {metric!r}; known: {', '.join(METRICS)}")
        out[str(metric)] = parse_percent(value, f"{where}.{metric}")
    return out


# ---- the store -------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, path)


class Store:
    """The baseline folder."""

    def __init__(self, root: Path) -> None:
        if root.exists() and not root.is_dir():
            raise GpufitError(
                f"baseline folder {root} is a file; give --gpufit-baseline-dir a folder"
            )
        self.root = root

    def gpu_dir(self, gpu_name: str) -> Path:
        return self.root / slug(gpu_name)

    def read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise GpufitError(f"baseline record {path} does not exist") from None
        except (OSError, ValueError) as error:
            raise GpufitError(
                f"baseline record {path} is unreadable or corrupt ({error}); "
                "restore it or delete it and save a new baseline"
            ) from None
        if not isinstance(data, dict) or "format" not in data or "results" not in data:
            raise GpufitError(f"baseline record {path} is not a gpufit baseline record")
        if not isinstance(data["format"], int) or data["format"] > FORMAT:
            raise GpufitError(
                f"baseline record {path} has format {data['format']!r}, newer than "
                f"this pytest-gpufit reads ({FORMAT}); upgrade pytest-gpufit"
            )
        return data

    def write_run(self, fp: Fingerprint, results: dict[str, Any], accept: bool) -> str:
        # Microseconds in the id, so ids sort in creation order (list, plot) even for runs
        # saved within one second.
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"
        run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
        record = {
            "format": FORMAT,
            "id": run_id,
            "created": now,
            "fingerprint": fp.to_dict(),
            "results": results,
        }
        folder = self.gpu_dir(fp.gpu_name)
        _atomic_write(
            folder / "runs" / f"{run_id}.json", json.dumps(record, indent=2, sort_keys=True) + "\n"
        )
        if accept:
            self.accept(fp.gpu_name, run_id)
        return run_id

    def accept(self, gpu_name: str, run_id: str) -> Path:
        path = self.gpu_dir(gpu_name) / "runs" / f"{run_id}.json"
        self.read(path)  # only a valid record can be accepted
        _atomic_write(self.gpu_dir(gpu_name) / "accepted", run_id + "\n")
        return path

    def accepted(self, gpu_name: str) -> dict[str, Any] | None:
        pointer = self.gpu_dir(gpu_name) / "accepted"
        if not pointer.exists():
            return None
        try:
            run_id = pointer.read_text("utf-8").strip()
        except OSError as error:
            raise GpufitError(f"baseline pointer {pointer} is unreadable: {error}") from None
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", run_id):
            raise GpufitError(f"baseline pointer {pointer} is corrupt: {run_id!r}")
        return self.read(self.gpu_dir(gpu_name) / "runs" / f"{run_id}.json")

    def runs(self) -> list[tuple[str, str, bool]]:
        """(gpu folder, run id, accepted) for every stored run, oldest first."""
        out: list[tuple[str, str, bool]] = []
        if not self.root.is_dir():
            return out
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            pointer = folder / "accepted"
            accepted = pointer.read_text().strip() if pointer.exists() else None
            for run in sorted((folder / "runs").glob("*.json")):
                out.append((folder.name, run.stem, run.stem == accepted))
        return out

    def find(self, run_id: str) -> Path:
        matches = list(self.root.glob(f"*/runs/{run_id}.json")) if self.root.is_dir() else []
        if len(matches) != 1:
            raise GpufitError(f"no single run {run_id!r} in {self.root} (gpufit baseline list)")
        return matches[0]


# ---- comparing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    metric: str
    old: float
    new: float
    change: float  # relative, new vs old
    tolerance: float
    verdict: str  # ok | worse | better

    def text(self) -> str:
        label = METRIC_LABELS.get(self.metric, self.metric)
        return (
            f"{label} {_fmt(self.old)} -> {_fmt(self.new)} ({self.change:+.1%}, tolerance "
            f"{self.tolerance:.0%})"
        )


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for metric in METRICS:
        value = metrics.get(_METRIC_SOURCES.get(metric, metric))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[metric] = float(value)
    return out


def compare(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    tolerances: Mapping[str, float],
    default_tolerance: float,
) -> list[Comparison]:
    """Compare two measurement dicts metric by metric, each in its own direction."""
    before, after = metric_values(old), metric_values(new)
    out = []
    for metric, new_value in after.items():
        if metric not in before:
            continue
        old_value = before[metric]
        tolerance = tolerances.get(metric, default_tolerance)
        # KL near zero is noise relative to itself: measure its change against a floor.
        scale = max(abs(old_value), _FLOORS.get(metric, 0.0))
        if scale == 0:
            change = 0.0 if new_value == 0 else float("inf") * (1 if new_value > 0 else -1)
        else:
            change = (new_value - old_value) / scale
        gain = change if METRICS[metric] else -change
        verdict = "worse" if gain < -tolerance else "better" if gain > tolerance else "ok"
        out.append(Comparison(metric, old_value, new_value, change, tolerance, verdict))
    return out


# ---- golden numerics -------------------------------------------------------------------------


def compare_golden(
    old: Mapping[str, Any], new: Mapping[str, Any], max_logprob_diff: float
) -> str | None:
    """None when ``new`` matches the stored greedy sequence, else why not.

    Tokens must be identical up to the first divergence; there, each side's token must be in
    the other's top-k and their log-probabilities within ``max_logprob_diff``; after it the
    sequences are no longer comparable (the check vLLM uses across kernels).
    """
    for step, (a, b) in enumerate(zip(old["tokens"], new["tokens"], strict=False)):
        old_top = dict(zip(old["top_ids"][step], old["top_logprobs"][step], strict=True))
        new_top = dict(zip(new["top_ids"][step], new["top_logprobs"][step], strict=True))
        if a == b:
            diff = abs(old_top[a] - new_top[b])
            if diff > max_logprob_diff:
                return (
                    f"step {step}: token {a} log-probability {old_top[a]:.4f} -> "
                    f"{new_top[b]:.4f} (|diff| {diff:.4f} > {max_logprob_diff})"
                )
            continue
        if a not in new_top or b not in old_top:
            return (
                f"step {step}: greedy token {a} -> {b}, and they are not in each other's "
                f"top-{len(old_top)}"
            )
        diff = abs(old_top[a] - new_top[a])
        if diff > max_logprob_diff:
            return (
                f"step {step}: tokens diverge ({a} -> {b}) and token {a}'s log-probability "
                f"moved by {diff:.4f} > {max_logprob_diff}"
            )
        return None  # a close call between near-equal tokens: the sequences part here
    return None


# ---- one session's use of the store ----------------------------------------------------------


class BaselineSession:
    """Reads accepted baselines once per GPU model, and saves the session's run per GPU model."""

    def __init__(
        self,
        store: Store,
        environment: Environment,
        gpus: tuple[Gpu, ...],
        root: Path | None = None,
    ) -> None:
        self.store = store
        self.environment = environment
        self.gpus = {g.name: g for g in gpus}
        self.commit = git_commit(root)
        self._accepted: dict[str, dict[str, Any] | None] = {}

    def fingerprint(self, gpu: Gpu | None) -> Fingerprint:
        return dataclasses.replace(fingerprint(gpu, self.environment), git_commit=self.commit)

    def accepted(self, gpu_name: str) -> dict[str, Any] | None:
        if gpu_name not in self._accepted:
            self._accepted[gpu_name] = self.store.accepted(gpu_name)
        return self._accepted[gpu_name]

    def save(
        self, measurements: Mapping[str, Mapping[str, Any]], accept: bool
    ) -> list[tuple[str, str, int]]:
        """Write one run per GPU model from the passed checks: (gpu name, run id, checks)."""
        by_gpu: dict[str, dict[str, Any]] = {}
        for nodeid, entry in measurements.items():
            if entry.get("outcome", "passed") == "passed":
                by_gpu.setdefault(str(entry.get("gpu", "cpu")), {})[nodeid] = dict(entry)
        saved = []
        for gpu_name, results in sorted(by_gpu.items()):
            fp = self.fingerprint(self.gpus.get(gpu_name))
            run_id = self.store.write_run(fp, results, accept)
            saved.append((gpu_name, run_id, len(results)))
        return saved
