"""Software versions, read without importing torch or transformers."""

from __future__ import annotations

import ast
import importlib.util
import platform
from pathlib import Path

from pytest_gpufit.hardware.records import Environment


def _module_constant(package: str, filename: str, name: str) -> str | None:
    """A string constant assigned in a package's file, read without importing the package
    (importing torch costs over a second; importlib.metadata scans every distribution)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    try:
        tree = ast.parse(path.read_text("utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == name:
            value = getattr(node, "value", None)
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    return None


def torch_cuda_runtime_version() -> str | None:
    """``torch.version.cuda``, read from the file."""
    return _module_constant("torch", "version.py", "cuda")


def software_environment(
    driver_version: str | None = None, cuda_driver_version: str | None = None
) -> Environment:
    return Environment(
        driver_version=driver_version,
        cuda_driver_version=cuda_driver_version,
        cuda_runtime_version=torch_cuda_runtime_version(),
        torch_version=_module_constant("torch", "version.py", "__version__"),
        transformers_version=_module_constant("transformers", "__init__.py", "__version__"),
        python_version=platform.python_version(),
        platform=f"{platform.system()}-{platform.machine()}",
    )
