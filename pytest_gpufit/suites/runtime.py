"""The session's model cache: each (model, dtype, device, backend) is loaded once and shared."""

from __future__ import annotations

import gc
from typing import Any

from pytest_gpufit.backends import load_backend
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.spec import load_spec
from pytest_gpufit.suites.records import Target

Key = tuple[str, str, str, str, str, bool, int]


def cache_key(target: Target) -> Key:
    return (
        str(target.model_path),
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
        self._devices: set[tuple[str, str]] = set()  # (backend, device) ever loaded onto

    def backend(self, target: Target) -> Any:
        """The backend module of ``target``; raises MissingExtra when it cannot be imported."""
        return load_backend(target.backend)

    def get(self, target: Target) -> Any:
        key = cache_key(target)
        if key in self._models:
            return self._models[key]
        if key in self._failures:
            raise self._failures[key]
        try:
            # The fit engine's header checks first: a truncated or lying checkpoint is one
            # error naming the file, not a loader traceback.
            load_spec(target.model_path)
        except GpufitError as error:
            self._failures[key] = error
            raise
        backend = self.backend(target)
        self._devices.add((target.backend, target.device))

        def load() -> Any:
            return backend.load(
                target.model_path,
                target.weights,
                target.dtype,
                target.device,
                target.trust_remote_code,
                target.seed,
            )

        try:
            evict = False
            try:
                loaded = load()
            except backend.OutOfMemory:
                if not self._models:
                    raise
                evict = True
            # Retried outside the except block: its traceback holds the failed attempt's
            # tensors, which must be garbage before the second attempt needs their memory.
            if evict:
                self.recover()  # memory is needed: drop every other model, then try once more
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

    def recover(self) -> None:
        """After out-of-memory: drop every model and hand the freed memory back to the device.

        Call it outside any ``except`` block, so the failed frames are already garbage.
        """
        gc.collect()  # frames of the failed attempt may sit in reference cycles
        self.clear()
        for backend_name, device in sorted(self._devices):
            load_backend(backend_name).free_device(device)

    def __len__(self) -> int:
        return len(self._models)
