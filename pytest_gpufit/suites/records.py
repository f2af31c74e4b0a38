"""The records a suite file parses into (``schema.parse_suite``): frozen, and free of the parser,
so the checks that run on them can name them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gpufit.baseline import BaselinePolicy
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.requirements import Requirement


@dataclass(frozen=True)
class Check:
    kind: str
    params: dict[str, Any]
    line: int
    field_lines: Mapping[str, int] = field(default_factory=dict)  # YAML line of each key


@dataclass(frozen=True)
class Launch:
    """``launch:`` of an openai target: the server gpufit starts, waits for and stops."""

    command: tuple[str, ...]
    ready_timeout_s: float = 900.0
    env: tuple[tuple[str, str], ...] = ()
    log_forbid: tuple[str, ...] = ()
    line: int = 0
    cwd: Path | None = None  # the suite's folder: relative paths in the command start here


@dataclass(frozen=True)
class Target:
    name: str
    model: Path | None  # None: an openai target without a model folder (no fit estimate)
    weights: str
    backend: str
    dtype: str
    device: str
    context: int | None
    requirement: Requirement | None
    checks: tuple[Check, ...]
    trust_remote_code: bool
    seed: int
    line: int
    has_tokenizer: bool
    baseline: BaselinePolicy = BaselinePolicy()
    endpoint: str | None = None  # openai: the API base URL, ``{port}`` for a launched server
    served_model: str | None = None  # openai: None means the only model /v1/models lists
    api_key_env: str | None = None  # openai: the NAME of the variable holding the key
    launch: Launch | None = None

    @property
    def model_path(self) -> Path:
        """The model folder; only called where the schema made sure there is one."""
        if self.model is None:
            raise GpufitError(f"target {self.name} names no model (give model: for a fit estimate)")
        return self.model


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    requirement: Requirement | None
    targets: tuple[Target, ...] = field(default=())
