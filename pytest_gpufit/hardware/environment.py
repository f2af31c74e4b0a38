"""Software versions, read without importing torch or transformers."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import platform
from pathlib import Path

from pytest_gpufit.hardware.records import Environment


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_cuda_runtime_version() -> str | None:
    """``torch.version.cuda`` read from the file: importing torch costs over a second."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        tree = ast.parse(version_file.read_text("utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == "cuda":
            value = getattr(node, "value", None)
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    return None


def software_environment(
    driver_version: str | None = None, cuda_driver_version: str | None = None
) -> Environment:
    return Environment(
        driver_version=driver_version,
        cuda_driver_version=cuda_driver_version,
        cuda_runtime_version=torch_cuda_runtime_version(),
        torch_version=package_version("torch"),
        transformers_version=package_version("transformers"),
        python_version=platform.python_version(),
        platform=f"{platform.system()}-{platform.machine()}",
    )
