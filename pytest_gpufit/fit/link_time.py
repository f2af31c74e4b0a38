"""How long one all-reduce takes between cards: the latency a tensor-parallel decode pays twice
per layer, by implementation, rank count, message size, PCIe topology and P2P.

A model, calibrated on published measurements (``fixtures/calibration/pcie-link.tsv``, each
constant names its rows; ``benchmarks/second_card.py`` prints every row beside the model):

- **one-shot** (vLLM's and SGLang's custom all-reduce: each rank reads its peers' buffers over
  P2P in one step; on PCIe they run it at 2 ranks with P2P only):
  ``ONESHOT_FLOOR_US + 2 x hop(topology) + bytes x (n - 1) / P2P bandwidth``.
- **NCCL** (everything else: more than two PCIe cards, P2P off, engines without a custom
  all-reduce): ``NCCL_FLOOR_US + steps x step(topology, p2p) + bytes x 2 (n - 1) / n /
  bus bandwidth``: a ring (``nccl``) takes ``2 (n - 1)`` dependent steps, a tree
  (``nccl-tree``) ``2 ceil(log2 n)``; the two agree at 2 cards.

Topology classes follow NVML's common ancestor (``hardware.records.TOPOLOGIES``): ``switch``
(board, single-switch, multiple-switches: PIX/PXB), ``host-bridge`` (host-bridge, numa-node:
PHB/NODE, the cards in one CPU's slots), ``sockets`` (system: SYS), and ``nvlink``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.records import LINK_LEVELS, SMI_LEVELS, link_level

US = 1e-6

# ---- calibrated constants (pcie-link.tsv rows, file:line) ------------------------------------
# Bus bandwidth of NCCL's all-reduce between two RTX PRO 6000: 25 GB/s through a PLX switch,
# 24 GB/s in CPU slots (pcie-link.tsv:52, 53): the size term of a message.
NCCL_BUSBW_B_S = 24e9


def _moved_us(size_bytes: float, ranks: int) -> float:
    """Microseconds a ring all-reduce of ``size_bytes`` spends moving data at the bus bandwidth."""
    return size_bytes * 2 * (ranks - 1) / ranks / NCCL_BUSBW_B_S / US


# NCCL's fixed cost per call and its per-step latency through one switch: two rows, two
# unknowns. 4 cards behind Broadcom switches, 1 KiB: 13.5 us (pcie-link.tsv:44); 8 cards behind
# c-payne switches sharing one CPU root, 4 KiB: 17.34 us (pcie-link.tsv:41). A ring of n takes
# 2(n-1) steps, 6 and 14.
_STEP_SWITCH = ((17.34 - _moved_us(4096, 8)) - (13.5 - _moved_us(1024, 4))) / (14 - 6)
NCCL_FLOOR_US = 13.5 - _moved_us(1024, 4) - 6 * _STEP_SWITCH
NCCL_STEP_US = {
    "switch": _STEP_SWITCH,
    # Through the CPU's root complex (switches on separate root ports, or cards in CPU slots):
    # 8 cards, 16 KiB: 18.66 us (pcie-link.tsv:42). The same box's 4 KiB figure, 23.93 us
    # (pcie-link.tsv:40), is larger than its own 16 KiB one and is held out.
    "host-bridge": (18.66 - _moved_us(16384, 8) - NCCL_FLOOR_US) / 14,
    # Across CPU sockets: dual AMD Turin, 8 cards, 32 KiB, with NCCL's graph XML fix: 26.20 us
    # (pcie-link.tsv:49); without it NCCL picks its SIMPLE protocol: 48.16 us (pcie-link.tsv:50,
    # held out: a tuning fault, not the link).
    "sockets": (26.20 - _moved_us(32768, 8) - NCCL_FLOOR_US) / 14,
    # NVLink: no row here; its hop is no longer than a switch's, so the switch figure is used
    # (never an underestimate of the latency).
    "nvlink": _STEP_SWITCH,
}
# P2P off: NCCL stages every step through host memory. 8 x RTX 4090 (the stock driver offers
# no P2P on the 4090; the row does not state it), NCCL_ALGO=TREE, 8 B: 42.56 us
# (pcie-link.tsv:51). A tree of 8 takes 2 x log2(8) = 6 steps.
NCCL_STEP_P2P_OFF_US = (42.56 - NCCL_FLOOR_US) / 6
# P2P write bandwidth between 2 RTX PRO 6000 through a PLX switch: 52.24 GB/s (pcie-link.tsv:56).
P2P_B_S = 52.24e9
# One P2P hop (CUDA's p2pBandwidthLatencyTest, P2P writes), by topology: 2 cards through a PLX
# switch 0.38-0.44 us (pcie-link.tsv:54), in CPU slots 0.37 us (pcie-link.tsv:19, 57), across
# sockets 0.38-0.44 us (pcie-link.tsv:20, 22). NVLink: not measured here, taken as PCIe's.
HOP_US = {"switch": 0.41, "host-bridge": 0.37, "sockets": 0.41, "nvlink": 0.37}
# The custom one-shot all-reduce: 4 cards behind Broadcom switches, 1 KiB: 6.1 us
# (pcie-link.tsv:48); the floor is what is left after its two hops through a switch (the data,
# and the flag the peer waits for) and the data itself. That box's own hop is slower,
# 0.71-0.74 us (pcie-link.tsv:24): the floor absorbs the difference.
ONESHOT_HOPS = 2
ONESHOT_FLOOR_US = 6.1 - ONESHOT_HOPS * HOP_US["switch"] - 1024 * 3 / P2P_B_S / US

TOPOLOGY_CLASSES = {
    "nvlink": "nvlink",
    "board": "switch",
    "single-switch": "switch",
    "multiple-switches": "switch",
    "host-bridge": "host-bridge",
    "numa-node": "host-bridge",
    "system": "sockets",
}
TOPOLOGY_CLASS_TEXT = {
    "switch": "through a PCIe switch [PIX/PXB]",
    "host-bridge": "in one CPU's slots [PHB/NODE]",
    "sockets": "across CPU sockets [SYS]",
    "nvlink": "NVLink",
}
DEFAULT_TOPOLOGY = "host-bridge"  # two cards in one workstation's CPU slots


@dataclass(frozen=True)
class LinkPath:
    """The path between the cards of a setup: its topology class and whether P2P works."""

    topology: str  # a TOPOLOGY_CLASSES value
    p2p: bool

    @property
    def text(self) -> str:
        """``host-bridge, P2P on``.

        >>> LinkPath("sockets", False).text
        'sockets, P2P off'
        """
        if self.topology == "nvlink":
            return "nvlink"
        return f"{self.topology}, P2P {'on' if self.p2p else 'off'}"


def parse_topology(text: str, option: str = "--topology") -> str:
    """A topology class from NVML's level names or nvidia-smi's (``PIX``, ``NODE``, ``SYS``).

    >>> parse_topology("PIX"), parse_topology("numa-node"), parse_topology("sys")
    ('switch', 'host-bridge', 'sockets')
    """
    key = link_level(text)
    if key in TOPOLOGY_CLASSES:
        return TOPOLOGY_CLASSES[key]
    if key in TOPOLOGY_CLASS_TEXT:
        return key
    smi = ", ".join(name.upper() for name in SMI_LEVELS)
    raise GpufitError(
        f"{option}: expected one of {', '.join(LINK_LEVELS)} (or nvidia-smi's {smi}), got {text!r}"
    )


def allreduce_seconds(kind: str, ranks: int, size_bytes: float, path: LinkPath) -> float:
    """One all-reduce of ``size_bytes`` over ``ranks`` cards: ``one-shot``, ``nccl`` (ring) or
    ``nccl-tree``.

    >>> two = LinkPath("host-bridge", True)
    >>> round(allreduce_seconds("one-shot", 2, 10240, two) / US, 1)  # Qwen3-32B, one token
    6.2
    >>> round(allreduce_seconds("nccl", 2, 10240, two) / US, 1)
    12.1
    >>> round(allreduce_seconds("nccl", 2, 10240, LinkPath("host-bridge", False)) / US, 1)
    21.8
    >>> allreduce_seconds("nccl", 1, 10240, two)
    0.0
    """
    if ranks <= 1:
        return 0.0
    if kind == "one-shot":
        hop = HOP_US[path.topology]
        return (ONESHOT_FLOOR_US + ONESHOT_HOPS * hop) * US + size_bytes * (ranks - 1) / P2P_B_S
    if kind not in ("nccl", "nccl-tree"):
        raise ValueError(f"unknown all-reduce {kind!r}")
    step = NCCL_STEP_US[path.topology] if path.p2p else NCCL_STEP_P2P_OFF_US
    steps = 2 * (ranks - 1) if kind == "nccl" else 2 * math.ceil(math.log2(ranks))
    return (NCCL_FLOOR_US + steps * step + _moved_us(size_bytes, ranks)) * US


def send_seconds(size_bytes: float, path: LinkPath) -> float:
    """One point-to-point send of activations between pipeline stages (NCCL send/recv): one
    step of the ring model.

    >>> round(send_seconds(10240, LinkPath("host-bridge", True)) / US, 1)
    11.4
    """
    step = NCCL_STEP_US[path.topology] if path.p2p else NCCL_STEP_P2P_OFF_US
    bandwidth = P2P_B_S if path.p2p else NCCL_BUSBW_B_S
    return (NCCL_FLOOR_US + step) * US + size_bytes / bandwidth
