"""The session's model cache: each (model, dtype, device, backend) is loaded once and shared."""

from __future__ import annotations

from typing import Any

from pytest_gpufit.backends import load_backend
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.suites.schema import Target

Key = tuple[str, str, str, str, str, bool, int]


def cache_key(target: Target) -> Key:
    return (
        str(target.model),
        target.weights,
        target.dtype,
        target.device,
        target.backend,
        target.trust_remote_code,
        target.seed,
    )


class ModelCache:
    """Loads on first use; evicts the others on out-of-memory and tries once more."""

    def __init__(self) -> None:
        self._models: dict[Key, Any] = {}
        self._failures: dict[Key, GpufitError] = {}  # a load that failed fails the same again

    def get(self, target: Target) -> Any:
        key = cache_key(target)
        if key in self._models:
            return self._models[key]
        if key in self._failures:
            raise self._failures[key]
        backend = load_backend(target.backend)

        def load() -> Any:
            return backend.load(
                target.model,
                target.weights,
                target.dtype,
                target.device,
                target.trust_remote_code,
                target.seed,
            )

        try:
            try:
                loaded = load()
            except backend.OutOfMemory:
                if not self._models:
                    raise
                self.clear()  # memory is needed: drop every other model, then try once more
                loaded = load()
        except GpufitError as error:
            self._failures[key] = error
            raise
        self._models[key] = loaded
        return loaded

    def drop(self, target: Target) -> None:
        loaded = self._models.pop(cache_key(target), None)
        if loaded is not None:
            loaded.unload()

    def clear(self) -> None:
        while self._models:
            _, loaded = self._models.popitem()
            loaded.unload()

    def __len__(self) -> int:
        return len(self._models)
