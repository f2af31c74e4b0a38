"""``gpufit baseline plot``: each metric across the stored runs (needs matplotlib).

One panel per GPU model, suite and metric; every run is one point on the x axis (runs are
placed by position, so two runs with the same label cannot collapse into one), and the
accepted run is marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gpufit.baseline import metric_values
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.metrics import format_value, label


@dataclass(frozen=True)
class Panel:
    """One metric of one suite on one GPU model, across its runs."""

    gpu: str
    suite: str
    metric: str
    runs: tuple[str, ...]  # x tick labels, oldest first
    accepted: int | None  # index into runs
    lines: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # check -> points

    @property
    def title(self) -> str:
        return f"{label(self.metric)}: {self.gpu}, suite {self.suite}"


def run_label(record: dict[str, Any], accepted: bool) -> str:
    """``20261127T0436 a1b2c3`` / ``driver 550.54`` / ``torch 2.6.0``; ``no driver`` for None.

    >>> run_label({"id": "20261127T043657123456Z-a1b2c3", "fingerprint": {}}, True)
    'accepted\\n20261127T043657 a1b2c3\\nno driver\\ntorch -'
    """
    fp = record["fingerprint"]
    run_id = str(record["id"])
    short = f"{run_id[:15]} {run_id.rsplit('-', 1)[-1]}" if "-" in run_id else run_id
    driver = fp.get("driver_version")
    lines = [
        short,
        f"driver {driver}" if driver else "no driver",
        f"torch {fp.get('torch_version') or '-'}",
    ]
    return "\n".join((["accepted"] if accepted else []) + lines)


def panels(records: Sequence[tuple[dict[str, Any], bool]]) -> list[Panel]:
    """(record, accepted) pairs -> one panel per (GPU model, suite, metric), runs in time order."""
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], bool]]] = {}
    for record, accepted in records:
        key = (str(record["fingerprint"].get("gpu_name")), str(record.get("suite")))
        groups.setdefault(key, []).append((record, accepted))
    out = []
    for (gpu, suite), runs in sorted(groups.items()):
        runs.sort(key=lambda r: (r[0].get("created", 0), r[0]["id"]))
        labels = tuple(run_label(record, accepted) for record, accepted in runs)
        accepted_at = next((i for i, (_, a) in enumerate(runs) if a), None)
        by_metric: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for x, (record, _) in enumerate(runs):
            for nodeid, entry in record["results"].items():
                for metric, value in metric_values(entry.get("metrics", {})).items():
                    by_metric.setdefault(metric, {}).setdefault(nodeid, []).append((x, value))
        for metric, lines in sorted(by_metric.items()):
            out.append(Panel(gpu, suite, metric, labels, accepted_at, lines))
    return out


def plot_runs(records: Sequence[tuple[dict[str, Any], bool]], output: Path) -> Path:
    try:
        import matplotlib  # late: an optional extra, only for this command

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # after use(): the backend is set before pyplot
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise GpufitError("plotting needs matplotlib: pip install 'pytest-gpufit[plot]'") from None
    data = panels(records)
    if not data:
        raise GpufitError("no stored runs with metrics to plot")
    fig, axes = plt.subplots(len(data), 1, figsize=(10, 3.6 * len(data)), squeeze=False)
    for ax, panel in zip(axes[:, 0], data, strict=True):
        for nodeid, points in sorted(panel.lines.items()):
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                label=nodeid.split("::", 1)[-1],
            )
        if panel.accepted is not None:
            ax.axvline(panel.accepted, color="green", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(panel.runs)), panel.runs)
        ax.set_xlim(-0.5, len(panel.runs) - 0.5)
        ax.yaxis.set_major_formatter(
            FuncFormatter(lambda v, _, name=panel.metric: format_value(name, v))
        )
        ax.set_title(panel.title)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
    return _save(fig, output)


def plot_ab(data: dict[str, Any], output: Path) -> Path | None:
    """``gpufit ab --plot``: per metric, the samples of A and B by round, with the verdict and
    B/A in the title. None where matplotlib is not installed (the A/B itself needs no plot)."""
    try:
        import matplotlib  # late: an optional extra, only for this command

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return None
    entries = data["metrics"]
    if not entries:
        return None
    fig, axes = plt.subplots(len(entries), 1, figsize=(8, 3.2 * len(entries)), squeeze=False)
    for ax, entry in zip(axes[:, 0], entries, strict=True):
        for side, marker in (("a", "o"), ("b", "s")):
            values = entry[side]
            ax.plot(range(1, len(values) + 1), values, marker=marker, label=side.upper())
        ax.yaxis.set_major_formatter(
            FuncFormatter(lambda v, _, name=entry["metric"]: format_value(name, v))
        )
        interval = f" [{entry['low']:.3f}, {entry['high']:.3f}]" if entry["low"] is not None else ""
        ax.set_title(
            f"{label(entry['metric'])}: {entry['test']}\nB/A {entry['ratio']:.3f}{interval}: "
            f"{entry['verdict']}",
            fontsize=9,
        )
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
    return _save(fig, output)


def _save(fig: Any, output: Path) -> Path:
    """Write the figure to ``output`` (one clear error where it cannot) and free it."""
    import matplotlib.pyplot as plt  # late: loaded already by the caller that made ``fig``

    fig.tight_layout()
    try:
        fig.savefig(output, dpi=100)
    except OSError as error:
        raise GpufitError(f"cannot write {output}: {error.strerror or error}") from None
    finally:
        plt.close(fig)
    return output
