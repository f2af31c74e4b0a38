"""What ``requires_fit`` asks: a plain record the marker table fills and the fit judge reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FitRequest:
    """``requires_fit``: a model at a precision, context, batch and number of instances;
    ``gpus`` > 1 splits one copy over that many devices (tensor parallel); ``engine`` judges
    by that engine's plan (does it start?) rather than by raw bytes."""

    model: str
    dtype: str = "bf16"
    context: int | None = None
    batch: int = 1
    instances: int = 1
    gpus: int = 1
    engine: str | None = None
