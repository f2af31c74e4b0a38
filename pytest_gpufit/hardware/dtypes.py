"""Which tensor dtypes a card runs natively, by architecture.

Thresholds as stated in PyTorch (``torch/testing/_internal/common_cuda.py``) and vLLM; sources in
``shared/model-configs/README.md``. "Loads through an emulation path" is not "native".
"""

from __future__ import annotations

import re

from pytest_gpufit.errors import GpufitError

# Canonical names first; aliases map onto them.
DTYPES = (
    "fp32",
    "tf32",
    "fp16",
    "bf16",
    "int8",
    "int4",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp4",
    "nvfp4",
    "mxfp4",
)
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "e4m3": "fp8_e4m3",
    "e5m2": "fp8_e5m2",
    "float8_e4m3fn": "fp8_e4m3",
    "float8_e5m2": "fp8_e5m2",
}
_FAMILY = {"fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "nvfp4": "fp4", "mxfp4": "fp4"}

_CC = re.compile(r"^ *(?:>= *)?([0-9]{1,3})(?:\.([0-9]{1,3}))? *$")
CC_JSON_SCHEMA = {
    "oneOf": [
        {"type": "string", "pattern": _CC.pattern.replace("(?:", "(")},
        {"type": "number", "minimum": 0, "maximum": 999},
    ],
    "description": "a minimum compute capability such as '8.9' or '12.0'",
}

# (min_cc, max_cc_exclusive or None) per family on NVIDIA.
_NVIDIA_RULES: dict[str, tuple[tuple[int, int], tuple[int, int] | None]] = {
    "fp32": ((0, 0), None),
    "fp16": ((7, 0), None),  # Volta tensor cores
    "int8": ((7, 5), None),  # Turing integer tensor cores
    "int4": ((7, 5), (9, 0)),  # Turing..Ada; Hopper and later tensor cores dropped INT4
    "tf32": ((8, 0), None),  # PyTorch: tf32 matmul from Ampere
    "bf16": ((8, 0), None),  # PyTorch PLATFORM_SUPPORTS_BF16 = SM80OrLater; vLLM the same
    "fp8": ((8, 9), None),  # PyTorch: SM90OrLater or capability == (8, 9)
    "fp4": ((10, 0), None),  # PyTorch PLATFORM_SUPPORTS_MX_GEMM = SM100OrLater (12.x too)
}
# AMD by gfx target (ROCm docs, conceptual/gpu-arch/mi300.html): matrix FP16/BF16/FP8/INT8.
_AMD_NATIVE = {"gfx942": ("fp32", "fp16", "bf16", "int8", "fp8", "fp8_e4m3", "fp8_e5m2")}


def canonical_dtype(name: object) -> str:
    """Return the canonical dtype name, or raise with the accepted names.

    >>> canonical_dtype("bfloat16")
    'bf16'
    """
    if isinstance(name, str):
        key = name.strip().lower()
        key = _ALIASES.get(key, key)
        if key in DTYPES:
            return key
    raise GpufitError(f"unknown dtype {name!r}; accepted: {', '.join(DTYPES)}")


def native_dtypes(
    compute_capability: tuple[int, int] | None,
    architecture: str | None = None,
    vendor: str = "nvidia",
) -> tuple[str, ...]:
    """Dtypes with native tensor-core (or ALU) support on a card.

    >>> "fp8" in native_dtypes((8, 9)), "fp8" in native_dtypes((8, 0))
    (True, False)
    >>> "fp4" in native_dtypes((12, 0))
    True
    """
    if vendor == "amd":
        return _AMD_NATIVE.get(architecture or "", ())
    if compute_capability is None:
        return ()
    out = []
    for dtype in DTYPES:
        low, high = _NVIDIA_RULES[_FAMILY.get(dtype, dtype)]
        if compute_capability >= low and (high is None or compute_capability < high):
            out.append(dtype)
    return tuple(out)


def parse_compute_capability(value: object) -> tuple[int, int]:
    """``"8.9"``, ``">=8.9"``, ``8.9``, ``"12"`` or ``(8, 9)`` -> ``(8, 9)``.

    >>> parse_compute_capability("12.0"), parse_compute_capability(">=8.9")
    ((12, 0), (8, 9))
    """
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (value[0], value[1])
    text = ""
    if isinstance(value, (str, float, int)) and not isinstance(value, bool):
        text = str(value)
    # ASCII digits only: '²'.isdigit() is True but int('²') fails.
    match = _CC.match(text)
    if match:
        return int(match.group(1)), int(match.group(2) or 0)
    raise GpufitError(f"expected a compute capability such as '8.9' or '12.0', got {value!r}")


def with_variants(families: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Add the named variants of each family (fp8 -> fp8_e4m3, fp8_e5m2), in canonical order.

    >>> with_variants(["fp16", "fp8"])
    ('fp16', 'fp8', 'fp8_e4m3', 'fp8_e5m2')
    """
    given = {canonical_dtype(d) for d in families}
    return tuple(d for d in DTYPES if d in given or _FAMILY.get(d) in given)
