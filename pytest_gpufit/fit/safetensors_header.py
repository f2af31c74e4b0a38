"""Read safetensors headers only (never tensor data): exact bytes and element counts per dtype."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from pytest_gpufit.errors import GpufitError

_MAX_HEADER = 100 * 2**20
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


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


def read_header(path: Path) -> dict[str, dict[str, object]]:
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise GpufitError(f"{path}: not a safetensors file (shorter than its header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER:
                raise GpufitError(f"{path}: not a safetensors file (header of {length} bytes)")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise GpufitError(f"{path}: unreadable safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise GpufitError(f"{path}: safetensors header is not a mapping")
    header.pop("__metadata__", None)
    return header


def checkpoint_info(folder: Path) -> CheckpointInfo | None:
    """Sum the headers of every ``*.safetensors`` file in a folder; None when there are none."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    nbytes: dict[str, int] = {}
    elements: dict[str, int] = {}
    for file in files:
        for name, entry in read_header(file).items():
            try:
                dtype = str(entry["dtype"])
                offsets: list[int] = entry["data_offsets"]  # type: ignore[assignment]
                start, end = int(offsets[0]), int(offsets[1])
                count = 1
                for dim in entry["shape"]:  # type: ignore[attr-defined]
                    count *= int(dim)
            except (KeyError, TypeError, ValueError):
                raise GpufitError(f"{file}: malformed header entry {name!r}") from None
            nbytes[dtype] = nbytes.get(dtype, 0) + end - start
            elements[dtype] = elements.get(dtype, 0) + count
    return CheckpointInfo(
        tuple(f.name for f in files), tuple(sorted(nbytes.items())), tuple(sorted(elements.items()))
    )
