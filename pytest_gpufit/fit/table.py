"""Compatibility tables: models x precisions, a column per GPU setup."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.estimate import GpuFit, MemoryEstimate, estimate, fit_on
from pytest_gpufit.fit.spec import ModelSpec, load_spec, shipped_models
from pytest_gpufit.hardware.catalog import catalog, catalog_gpu, split_repeat
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.units import format_gb


@dataclass(frozen=True)
class Setup:
    """``count`` identical cards used together (tensor-parallel), named like ``2*h200``."""

    id: str
    gpu: Gpu
    count: int = 1


def parse_setups(text: str, what: str = "--gpus") -> list[Setup]:
    """``"rtx-pro-6000-blackwell,2*rtx-pro-6000-blackwell"`` -> setups.

    >>> [s.id for s in parse_setups("h200,2*h100-sxm")]
    ['h200', '2*h100-sxm']
    """
    setups = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        count, card = split_repeat(part, what)
        setups.append(Setup(part, catalog_gpu(card), count))
    if not setups:
        raise GpufitError(f"{what}: no GPU given; known ids: {', '.join(catalog())}")
    return setups


def local_setups(gpus: Sequence[Gpu]) -> list[Setup]:
    """Each local GPU alone, and all of them together when they are identical."""
    setups = [Setup(f"GPU{g.index}", g) for g in gpus]
    if len(gpus) > 1 and len({g.name for g in gpus}) == 1:
        setups.append(Setup(f"{len(gpus)}*GPU", gpus[0], len(gpus)))
    return setups


def all_catalog_setups() -> list[Setup]:
    return [Setup(card, catalog_gpu(card)) for card in catalog()]


def default_models() -> list[str]:
    return sorted(k for k in shipped_models() if "/" not in k)


@dataclass(frozen=True)
class Row:
    spec: ModelSpec
    estimate: MemoryEstimate
    fits: tuple[GpuFit, ...]


def build_rows(
    models: Sequence[str],
    setups: Sequence[Setup],
    dtypes: Sequence[str],
    context: int | None = None,
    batch: int = 1,
    kv_dtype: str | None = None,
) -> list[Row]:
    rows = []
    for model in models:
        spec = load_spec(model)
        for dtype in dtypes:
            est = estimate(spec, dtype, context, batch, kv_dtype)
            fits = tuple(fit_on(spec, est, s.gpu, s.count, s.id) for s in setups)
            rows.append(Row(spec, est, fits))
    return rows


def _tokens(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 else str(n)


def cell(fit: GpuFit) -> str:
    """``fits x2, 40k ctx, 260 tok/s`` or why not."""
    if fit.precision_support == "unsupported":
        return "unsupported precision"
    if not fit.fits:
        if fit.max_context:
            return f"only to {_tokens(fit.max_context)} ctx"
        return f"no: {format_gb(fit.per_card_bytes)}/card"
    ceiling = f", {fit.decode_tok_s_ceiling:.0f} tok/s" if fit.decode_tok_s_ceiling else ""
    emulated = " (emulated)" if fit.precision_support == "emulated" else ""
    return f"fits x{fit.instances}, {_tokens(fit.max_context)} ctx{ceiling}{emulated}"


def render(rows: Sequence[Row], setups: Sequence[Setup], fmt: str = "text") -> str:
    header = ["model", "dtype", "weights", "total"] + [s.id for s in setups]
    body = [
        [
            r.spec.name,
            r.estimate.dtype,
            format_gb(r.estimate.weights_bytes),
            format_gb(r.estimate.total_bytes),
        ]
        + [cell(f) for f in r.fits]
        for r in rows
    ]
    if fmt == "json":
        return json.dumps(
            [
                {
                    "model": r.spec.name,
                    "estimate": r.estimate.to_dict(),
                    "gpus": [f.to_dict() for f in r.fits],
                }
                for r in rows
            ],
            indent=2,
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    if fmt != "text":
        raise GpufitError(f"--format: expected text, markdown, csv or json, got {fmt!r}")
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    )
