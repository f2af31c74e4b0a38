"""The catalog of real cards (``catalog.yaml``), used by simulation and the fit tables."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.dtypes import parse_compute_capability, with_variants
from pytest_gpufit.hardware.records import Gpu, GpuLink

MIB = 2**20


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, dict[str, Any]]:
    """The catalog entries by id, read once from the package."""
    import yaml  # late: only simulation and the fit tables read the catalog

    text = resources.files("pytest_gpufit.hardware").joinpath("catalog.yaml").read_text("utf-8")
    data: dict[str, dict[str, Any]] = yaml.safe_load(text)
    return data


@functools.lru_cache(maxsize=1)
def aliases() -> dict[str, str]:
    """Other ids users type (runner labels such as ``rtx-pro-6000``) -> the catalog id."""
    return {
        str(alias).lower(): card
        for card, entry in catalog().items()
        for alias in entry.get("aliases", ())
    }


def canonical_id(card_id: str) -> str | None:
    """The catalog id for an id or alias (any case), or None.

    >>> canonical_id("RTX-PRO-6000"), canonical_id("h100"), canonical_id("t4"), canonical_id("x")
    ('rtx-pro-6000-blackwell', 'h100-sxm', 't4', None)
    """
    key = card_id.strip().lower()
    return key if key in catalog() else aliases().get(key)


def known_ids() -> str:
    """The ids, then the aliases, for messages.

    >>> known_ids().split("; ")[1].split(", ")[:2]
    ['aliases: 4090 = rtx-4090', '5090 = rtx-5090']
    """
    names = ", ".join(catalog())
    alias = ", ".join(f"{a} = {card}" for a, card in aliases().items())
    return f"{names}; aliases: {alias}" if alias else names


@dataclass(frozen=True)
class Link:
    """How two cards of a kind talk: ``pcie5``, ``nvlink4``...; bytes/s each way between two."""

    kind: str
    bytes_s: int


def card_link(card_id: str) -> Link | None:
    """The catalog's interconnect facts for a card (None when the entry has none)."""
    entry = catalog().get(canonical_id(card_id) or "", {})
    if "link_gb_s" not in entry:
        return None
    return Link(str(entry.get("interconnect", "unknown")), int(float(entry["link_gb_s"]) * 10**9))


def catalog_gpu(card_id: str, index: int = 0) -> Gpu:
    """A simulated ``Gpu`` for a catalog id or alias; memory is all free."""
    entries = catalog()
    canonical = canonical_id(card_id)
    if canonical is None:
        raise GpufitError(f"unknown GPU id {card_id!r}; known ids: {known_ids()}")
    card_id = canonical
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
    canonical = canonical_id(card)
    if canonical is None:
        raise GpufitError(f"{what}: unknown GPU id {card!r}; known ids: {known_ids()}")
    return int(count_text or 1), canonical


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


def simulated_link(first: Gpu, second: Gpu) -> GpuLink:
    """What the catalog knows of two simulated cards: never the PCIe topology (a host fact).

    Two NVLink cards of one kind: P2P over NVLink. Two PCIe cards of one kind: the catalog's
    ``p2p`` (stock driver), no NVLink. Anything else, or a card the catalog says nothing
    about: unknown (None), which a ``requires_p2p`` never counts as met.

    >>> pro, sxm = catalog_gpu("rtx-pro-6000"), catalog_gpu("h100-sxm", 1)
    >>> pair = simulated_link(pro, catalog_gpu("rtx-pro-6000", 1))
    >>> pair.p2p, pair.topology, pair.p2p_nvlink
    (True, None, 'not-supported')
    >>> simulated_link(pro, sxm).p2p is None
    True
    """
    a, b = sorted((first.index, second.index))
    kind = first.catalog_id
    entry = catalog().get(kind or "", {})
    if kind is None or kind != second.catalog_id or entry.get("vendor", "nvidia") != "nvidia":
        return GpuLink(a, b, simulated=True)
    interconnect = str(entry.get("interconnect", ""))
    if interconnect.startswith("nvlink"):
        return GpuLink(a, b, p2p_read="ok", p2p_write="ok", p2p_nvlink="ok", simulated=True)
    p2p = entry.get("p2p")
    status = None if p2p is None else "ok" if p2p else "not-supported"
    nvlink = "not-supported" if interconnect.startswith("pcie") else None
    return GpuLink(a, b, p2p_read=status, p2p_write=status, p2p_nvlink=nvlink, simulated=True)


MAX_LINKED_GPUS = 64  # pairs grow as n^2: 1,024 simulated cards would make 523,776 records


def simulated_links(gpus: tuple[Gpu, ...]) -> tuple[GpuLink, ...]:
    """One ``simulated_link`` per pair of simulated cards; none beyond ``MAX_LINKED_GPUS``
    cards (far more than one host holds), where ``requires_p2p`` finds no link facts."""
    if len(gpus) > MAX_LINKED_GPUS:
        return ()
    return tuple(
        simulated_link(first, second) for n, first in enumerate(gpus) for second in gpus[n + 1 :]
    )
