"""What a suite check is given: its target, the judged device, the session's model cache, and
the target's backend through typed capabilities (``pytest_gpufit.backends.capabilities``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_gpufit.backends.capabilities import (
    Bound,
    Generate,
    GoldenTopK,
    InProcessModel,
    Serve,
)
from pytest_gpufit.backends.in_process import InProcess
from pytest_gpufit.backends.streamed import Streamed
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.context import check_context
from pytest_gpufit.fit.estimate import MemoryEstimate, estimate
from pytest_gpufit.fit.spec import ModelSpec, load_spec
from pytest_gpufit.hardware.records import Gpu

if TYPE_CHECKING:
    from pytest_gpufit.suites.records import Target
    from pytest_gpufit.suites.runtime import ModelCache


class CheckFailed(Exception):
    """An expectation of a suite check was not met; the message says by how much."""


@dataclass
class Context:
    """What a check may use: the target, its device (a GPU record, or None on the CPU), the
    figures it measured and the expectations it found unmet; a check of several devices
    (allreduce) has every GPU its requirement picked in ``devices``."""

    target: Target
    gpu: Gpu | None
    cache: ModelCache
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # A served target (backend: openai): its running server, started on first call.
    served: Callable[[], Serve] | None = None
    progress: Callable[[str], None] | None = None  # one line on the terminal (load levels)
    # Every GPU the target's verdict picked (``gpu`` among them); empty on the CPU.
    devices: tuple[Gpu, ...] = ()
    _bound: Bound | None = field(default=None, init=False, repr=False)

    @property
    def spec(self) -> ModelSpec:
        return load_spec(self.target.model_path)

    def estimate(self, context: int | None = None, batch: int = 1) -> MemoryEstimate:
        spec = self.spec
        asked = context or self.target.context
        # A verdict for a context the model (and vLLM) refuses would be an unearned green.
        check_context(spec, asked, "context")
        # A CPU target has no CUDA runtime to count (a 0.6 MB model is not 0.8 GB).
        device = "cpu" if self.target.device == "cpu" else "cuda"
        return estimate(spec, self.target.dtype, asked, batch, device=device)

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)

    # ---- the target's backend, by capability ---------------------------------------------

    def bound(self) -> Bound:
        """The target's backend as a check meets it; a server is started on the first call."""
        if self._bound is None:
            if self.served is not None:
                self._bound = Streamed(self.served())
            else:
                target, cache = self.target, self.cache
                self._bound = InProcess(
                    lambda: cache.get(target), lambda: cache.backend(target), target.seed
                )
        return self._bound

    def generator(self) -> Generate:
        bound = self.bound()
        if isinstance(bound, Generate):
            return bound
        raise self._lacks("generation")

    def golden_topk(self) -> GoldenTopK:
        bound = self.bound()
        if isinstance(bound, GoldenTopK):
            return bound
        raise self._lacks("top-k log-probabilities")

    def in_process_model(self) -> InProcessModel:
        bound = self.bound()
        if isinstance(bound, InProcessModel):
            return bound
        raise self._lacks("model loaded in this process")

    def server(self) -> Serve:
        bound = self.bound()
        if isinstance(bound, Streamed):
            return bound.served
        raise self._lacks("server")

    def _lacks(self, what: str) -> GpufitError:
        # The schema refuses a check whose needs the backend lacks: reaching here is a bug.
        return GpufitError(
            f"target {self.target.name}: the {self.target.backend} backend has no {what} "
            "(an internal error: collection should have refused this check)"
        )
