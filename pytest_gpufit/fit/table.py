"""Compatibility tables: models x precisions, a column per GPU setup."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.context import RopeScaling, check_context, with_rope_scaling
from pytest_gpufit.fit.estimate import GpuFit, MemoryEstimate, estimate, fit_on
from pytest_gpufit.fit.spec import ModelSpec, load_spec, shipped_models
from pytest_gpufit.hardware.catalog import catalog, catalog_gpu, split_repeat
from pytest_gpufit.hardware.records import Gpu
from pytest_gpufit.numbers import short_tokens
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
        count, card = split_repeat(part, what)  # an alias becomes its catalog id
        setups.append(Setup(f"{count}*{card}" if "*" in part else card, catalog_gpu(card), count))
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
    beyond: str | None = None  # the asked context exceeds the model's maximum: every cell says so


def build_rows(
    models: Sequence[str],
    setups: Sequence[Setup],
    dtypes: Sequence[str],
    context: int | None = None,
    batch: int = 1,
    kv_dtype: str | None = None,
    strict_context: bool = True,
    rope: RopeScaling | None = None,
) -> list[Row]:
    """One row per model and precision. A context beyond a model's maximum is an error for a
    model the user named (``strict_context``); over the default model list the row says so.
    ``rope`` extends every model's maximum as the engines' rope-scaling override does."""
    rows = []
    for model in models:
        spec = with_rope_scaling(load_spec(model), rope)
        beyond = None
        try:
            check_context(spec, context)
        except GpufitError:
            if strict_context:
                raise
            beyond = f"beyond its max context ({short_tokens(spec.max_position_embeddings or 0)})"
        for dtype in dtypes:
            est = estimate(spec, dtype, context, batch, kv_dtype)
            fits = tuple(fit_on(spec, est, s.gpu, s.count, s.id) for s in setups)
            rows.append(Row(spec, est, fits, beyond))
    return rows


def cell(fit: GpuFit) -> str:
    """``fits x2, 40k ctx, 260 tok/s, 12.3 GB free`` or why not, with the numbers.

    >>> from pytest_gpufit.fit.estimate import estimate, fit_on
    >>> from pytest_gpufit.hardware.catalog import catalog_gpu
    >>> spec = load_spec("llama-3.1-70b")
    >>> cell(fit_on(spec, estimate(spec, "bf16"), catalog_gpu("rtx-pro-6000")))
    'no: needs 149.6 GB/card, card has 101.6 GB usable'
    """
    if fit.precision_support == "unsupported":
        return "unsupported precision"
    if fit.split_error:
        return f"no: {fit.split_error}"
    if not fit.fits:
        needs = (
            f"needs {format_gb(fit.per_card_bytes)}/card, "
            f"card has {format_gb(fit.usable_bytes)} usable"
        )
        if fit.max_context:
            return f"only to {short_tokens(fit.max_context)} ctx ({needs})"
        return f"no: {needs}"
    ceiling = f", {fit.decode_tok_s_ceiling:.0f} tok/s" if fit.decode_tok_s_ceiling else ""
    emulated = " (emulated)" if fit.precision_support == "emulated" else ""
    free = f", {format_gb(fit.headroom_bytes)} free"
    return f"fits x{fit.instances}, {short_tokens(fit.max_context)} ctx{ceiling}{free}{emulated}"


LEGEND = (
    "fits xN: N copies fit side by side, each split over all the setup's cards",
    "C ctx: the largest context one copy can hold (up to the model's maximum)",
    "T tok/s: decode ceiling, memory bandwidth / bytes read per token; a bound, not a "
    "measurement (tensor parallel over N cards: the link is not counted here, see "
    "`gpufit upgrade`)",
    "X free: headroom per card for one copy at the table's context",
    "(emulated): no native tensor-core support for the format; weight-only/fallback kernels",
    "no: needs X/card, card has Y usable: one copy at the table's context does not fit (usable: "
    "what CUDA can allocate, less than NVML's total)",
    "only to C ctx: fits, but only up to context C, not at the table's context",
    "no: N GPUs do not divide the heads: tensor parallel over N cards is not possible",
)


# What marks a legend entry's symbol in a cell: only the entries a table uses are printed.
_LEGEND_MARKS = (
    "fits x",
    " ctx",
    " tok/s",
    " free",
    "(emulated)",
    "no: needs",
    "only to",
    "divide",
)


def legend(cells: Sequence[str]) -> list[str]:
    """The legend entries whose symbol appears in ``cells``.

    >>> [item.split(":")[0] for item in legend(["no: needs 149.6 GB/card, card has 101.6 GB"])]
    ['no']
    """
    text = "\n".join(cells)
    return [item for item, mark in zip(LEGEND, _LEGEND_MARKS, strict=True) if mark in text]


def render(rows: Sequence[Row], setups: Sequence[Setup], fmt: str = "text") -> str:
    header = ["model", "dtype", "weights", "total"] + [s.id for s in setups]
    body = [
        [
            r.spec.name,
            r.estimate.dtype,
            format_gb(r.estimate.weights_bytes),
            format_gb(r.estimate.total_bytes),
        ]
        + [r.beyond or cell(f) for f in r.fits]
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
        used = legend([cell for row in body for cell in row[4:]])
        return "\n".join([*lines, "", *(f"- {item}" for item in used)])
    if fmt != "text":
        raise GpufitError(f"--format: expected text, markdown, csv or json, got {fmt!r}")
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    used = legend([cell for row in body for cell in row[4:]])
    return "\n".join([*table, "", *(f"  {item}" for item in used)])
