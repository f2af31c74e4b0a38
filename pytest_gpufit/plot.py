"""``gpufit baseline plot``: each metric across the stored runs (needs matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_gpufit.baseline import METRIC_LABELS, metric_values
from pytest_gpufit.errors import GpufitError


def series(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """metric -> check -> [(run label, value)], runs in time order."""
    out: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for record in sorted(records, key=lambda r: r.get("created", 0)):
        fp = record["fingerprint"]
        run_id = str(record["id"])[:15]
        label = f"{run_id}\ndriver {fp.get('driver_version')}\ntorch {fp.get('torch_version')}"
        for nodeid, entry in record["results"].items():
            for metric, value in metric_values(entry.get("metrics", {})).items():
                out.setdefault(metric, {}).setdefault(nodeid, []).append((label, value))
    return out


def plot_runs(records: Sequence[dict[str, Any]], output: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GpufitError("plotting needs matplotlib: pip install 'pytest-gpufit[plot]'") from None
    data = series(records)
    if not data:
        raise GpufitError("no stored runs with metrics to plot")
    fig, axes = plt.subplots(len(data), 1, figsize=(10, 3.2 * len(data)), squeeze=False)
    for ax, (metric, checks) in zip(axes[:, 0], sorted(data.items()), strict=True):
        for nodeid, points in sorted(checks.items()):
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                label=nodeid.split("::", 1)[-1],
            )
        ax.set_title(METRIC_LABELS.get(metric, metric))
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
