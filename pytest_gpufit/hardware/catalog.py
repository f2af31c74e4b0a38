"""The catalog of real cards (``catalog.yaml``), used by simulation and the fit tables."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.dtypes import parse_compute_capability, with_variants
from pytest_gpufit.hardware.records import Gpu

MIB = 2**20


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, dict[str, Any]]:
    """The catalog entries by id, read once from the package."""
    import yaml  # late: only simulation and the fit tables read the catalog

    text = resources.files("pytest_gpufit.hardware").joinpath("catalog.yaml").read_text("utf-8")
    data: dict[str, dict[str, Any]] = yaml.safe_load(text)
    return data


def catalog_gpu(card_id: str, index: int = 0) -> Gpu:
    """A simulated ``Gpu`` for a catalog id; memory is all free."""
    entries = catalog()
    if card_id not in entries:
        raise GpufitError(f"unknown GPU id {card_id!r}; known ids: {', '.join(entries)}")
    entry = entries[card_id]
    total = int(entry["memory_mib"]) * MIB
    cc_text = entry.get("compute_capability")
    cc = parse_compute_capability(cc_text) if cc_text else None
    return Gpu(
        index=index,
        name=entry["name"],
        memory_total_bytes=total,
        memory_free_bytes=total,
        memory_used_bytes=0,
        compute_capability=cc,
        architecture=entry.get("architecture"),
        vendor=entry.get("vendor", "nvidia"),
        memory_bandwidth_bytes_s=int(entry["bandwidth_gb_s"] * 10**9),
        native_dtypes=with_variants(entry["dtypes"]),
        catalog_id=card_id,
        simulated=True,
    )


MAX_SIMULATED_GPUS = 1024  # far above any one machine; a bigger count is a typo or an attack
_ASCII_DIGITS = frozenset("0123456789")


def split_repeat(part: str, what: str) -> tuple[int, str]:
    """``"2*h100-sxm"`` -> ``(2, "h100-sxm")``, checking the count and the catalog id.

    The count is ASCII digits from 1 to ``MAX_SIMULATED_GPUS`` (``str.isdigit`` would let
    ``"²"`` through to ``int()``; a count of 10**12 would build a list of that many cards).
    """
    count_text, _, card = part.rpartition("*")
    count_text, card = count_text.strip(), card.strip().lower()
    shown = part if len(part) <= 40 else part[:37] + "..."
    if count_text and not (set(count_text) <= _ASCII_DIGITS and count_text.strip("0")):
        raise GpufitError(f"{what}: bad count in {shown!r}; write ID or N*ID, e.g. 2*h100-sxm")
    # Compared as text first: int() of a 5,000-digit count is itself an error.
    if len(count_text.lstrip("0")) > 4 or int(count_text or 1) > MAX_SIMULATED_GPUS:
        raise GpufitError(
            f"{what}: too many GPUs in {shown!r}; at most {MAX_SIMULATED_GPUS} GPUs in a "
            "simulated setup"
        )
    if card not in catalog():
        raise GpufitError(f"{what}: unknown GPU id {card!r}; known ids: {', '.join(catalog())}")
    return int(count_text or 1), card


def parse_setup(text: str, what: str = "--gpufit-simulate") -> list[str]:
    """Expand ``"2*h100-sxm,rtx-4090"`` into one catalog id per GPU.

    >>> parse_setup("2*h100-sxm,t4")
    ['h100-sxm', 'h100-sxm', 't4']
    """
    ids: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        count, card = split_repeat(part, what)
        if len(ids) + count > MAX_SIMULATED_GPUS:
            raise GpufitError(
                f"{what}: {len(ids) + count} GPUs in all; at most {MAX_SIMULATED_GPUS} GPUs in "
                "a simulated setup"
            )
        ids.extend([card] * count)
    if not ids:
        raise GpufitError(f"{what}: no GPU id given; known ids: {', '.join(catalog())}")
    return ids


def simulated_gpus(text: str, what: str = "--gpufit-simulate") -> tuple[Gpu, ...]:
    return tuple(catalog_gpu(card, i) for i, card in enumerate(parse_setup(text, what)))
