"""Read safetensors headers only (never tensor data): exact bytes and element counts per dtype.

A header is checked as the safetensors loader checks it (every tensor's byte span matches its
shape and dtype; the spans tile the data with no gap or overlap; the file holds exactly that
data), so a truncated or lying checkpoint is one ``GpufitError`` naming the file, not an
estimate that "fits" and a loader traceback later.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpufit.errors import GpufitError

_MAX_HEADER = 100 * 2**20  # the safetensors loader's own limit
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Bits per element of every dtype the safetensors format (0.8) defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True)
class CheckpointInfo:
    """What the headers of a folder's ``*.safetensors`` files say."""

    files: tuple[str, ...]
    bytes_by_dtype: tuple[tuple[str, int], ...]
    elements_by_dtype: tuple[tuple[str, int], ...]

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.bytes_by_dtype)

    @property
    def float_elements(self) -> int:
        return sum(n for d, n in self.elements_by_dtype if d in FLOAT_DTYPES)

    @property
    def other_bytes(self) -> int:
        return sum(b for d, b in self.bytes_by_dtype if d not in FLOAT_DTYPES)


@dataclass(frozen=True)
class Tensor:
    """One header entry, checked: its dtype, element count and byte span in the data."""

    name: str
    dtype: str
    elements: int
    start: int
    end: int


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The header object (without ``__metadata__``) and the byte count of the data after it."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise GpufitError(
                    f"{path}: {size:,} bytes: too short for a safetensors file "
                    "(it starts with an 8-byte header length)"
                )
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER:
                raise GpufitError(
                    f"{path}: not a safetensors file (header length {length:,} bytes; "
                    f"the format allows {_MAX_HEADER:,})"
                )
            if length > size - 8:
                raise GpufitError(
                    f"{path}: header length says {length:,} bytes, file has {size - 8:,} after "
                    "the length (truncated, or not a safetensors file)"
                )
            raw = handle.read(length)
    except OSError as error:
        raise GpufitError(f"{path}: unreadable: {error.strerror or error}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise GpufitError(f"{path}: safetensors header is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise GpufitError(
            f"{path}: safetensors header is not valid JSON: {error.msg} at byte {error.pos:,}"
        ) from None
    if not isinstance(header, dict):
        raise GpufitError(f"{path}: safetensors header must be a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise GpufitError(f"{path}: __metadata__ must map names to strings")
    return header, size - 8 - length


def _tensor(path: Path, name: str, entry: Any) -> Tensor:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise GpufitError(f"{where}: expected an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BITS:
        raise GpufitError(
            f"{where}: unknown dtype {dtype!r}; safetensors dtypes: {', '.join(DTYPE_BITS)}"
        )
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise GpufitError(f"{where}: shape must be a list of whole numbers >= 0, got {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_natural(o) for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise GpufitError(
            f"{where}: data_offsets must be [start, end] with 0 <= start <= end, got {offsets!r}"
        )
    elements = 1
    for dim in shape:
        elements *= dim
    bits = elements * DTYPE_BITS[dtype]
    span = offsets[1] - offsets[0]
    if bits % 8 or bits // 8 != span:
        need = f"{bits // 8:,} bytes" if bits % 8 == 0 else f"{bits:,} bits (not whole bytes)"
        raise GpufitError(
            f"{where}: shape {shape} in {dtype} is {need}, but data_offsets span {span:,} bytes"
        )
    return Tensor(name, dtype, elements, offsets[0], offsets[1])


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_tensors(path: Path) -> list[Tensor]:
    """Every tensor of one file, checked against each other and the file's size."""
    header, data_bytes = read_header(path)
    tensors = sorted(
        (_tensor(path, name, entry) for name, entry in header.items()),
        key=lambda t: (t.start, t.end),
    )
    declared = max((t.end for t in tensors), default=0)
    if declared > data_bytes:
        raise GpufitError(
            f"{path}: header says {declared:,} bytes of tensor data, file has {data_bytes:,} "
            "(truncated?)"
        )
    position, previous = 0, None
    for tensor in tensors:
        if tensor.start < position and previous is not None:
            raise GpufitError(
                f"{path}: tensors {previous.name!r} (bytes {previous.start:,}-{previous.end:,}) "
                f"and {tensor.name!r} (bytes {tensor.start:,}-{tensor.end:,}) overlap"
            )
        if tensor.start > position:
            raise GpufitError(
                f"{path}: bytes {position:,}-{tensor.start:,} of the tensor data belong to no "
                "tensor in the header"
            )
        position, previous = tensor.end, tensor
    if declared < data_bytes:
        raise GpufitError(
            f"{path}: file has {data_bytes:,} bytes of tensor data, header accounts for "
            f"{declared:,}"
        )
    return tensors


def checkpoint_info(folder: Path) -> CheckpointInfo | None:
    """Sum the headers of every ``*.safetensors`` file in a folder; None when there are none."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    nbytes: dict[str, int] = {}
    elements: dict[str, int] = {}
    for file in files:
        for tensor in read_tensors(file):
            nbytes[tensor.dtype] = nbytes.get(tensor.dtype, 0) + tensor.end - tensor.start
            elements[tensor.dtype] = elements.get(tensor.dtype, 0) + tensor.elements
    return CheckpointInfo(
        tuple(f.name for f in files), tuple(sorted(nbytes.items())), tuple(sorted(elements.items()))
    )
