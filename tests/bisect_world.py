"""Real packages for ``gpufit bisect``'s tests: tiny wheels written here, and a judge that times
a plain pytest test under each interpreter.

Packages ``pkg_a``, ``pkg_b``, ``pkg_c``, ``pkg_d`` at versions 1.0 and 2.0; each has
``work()``, which sleeps ``BASE_S``, except ``pkg_b`` 2.0, which sleeps ``SLOW`` times longer
(sleeping, not spinning: the factor holds on a loaded 2-core machine). ``pkg_d`` 2.0 pins
``pkg-b==2.0`` and 1.0 pins ``pkg-b==1.0``: the two cannot be installed apart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

from pytest_gpufit.ab.bisect import Judgement, MetricJudgement

BASE_S = 0.01
SLOW = 5.0
PACKAGES = ("pkg_a", "pkg_b", "pkg_c", "pkg_d")
PINS = {("pkg_d", "1.0"): ["pkg-b==1.0"], ("pkg_d", "2.0"): ["pkg-b==2.0"]}


def make_wheel(folder: Path, name: str, version: str, source: str, requires: list[str]) -> Path:
    """A pure-Python wheel of one module package, as a build backend writes it (RECORD with
    hashes), so uv and pip install it as any other."""
    dist = f"{name}-{version}.dist-info"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {name.replace('_', '-')}\n",
            f"Version: {version}\n",
            *(f"Requires-Dist: {r}\n" for r in requires),
        ]
    )
    files = {
        f"{name}/__init__.py": source,
        f"{dist}/METADATA": metadata,
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: gpufit-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def make_wheels(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        for version in ("1.0", "2.0"):
            seconds = BASE_S * (SLOW if (name, version) == ("pkg_b", "2.0") else 1.0)
            source = (
                f'"""{name} {version}, made by the bisect tests."""\n'
                "import time\n\n"
                f"def work():\n    time.sleep({seconds!r})\n"
            )
            make_wheel(folder, name, version, source, PINS.get((name, version), []))
    return folder


WORK_TEST = '''\
"""What the bisect tests measure: every pkg_* work() the environment has, timed."""
import importlib, json, os, time
import pytest

@pytest.mark.parametrize("repeat", range(int(os.environ["BISECT_REPEATS"])))
def test_work(repeat):
    modules = []
    for name in ("pkg_a", "pkg_b", "pkg_c", "pkg_d"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    assert modules
    start = time.perf_counter()
    for module in modules:
        module.work()
    with open(os.environ["BISECT_TIMES"], "a") as out:
        out.write(json.dumps(time.perf_counter() - start) + "\\n")
'''

TEST_ID = "test_work.py::test_work"


class TimingJudge:
    """Times ``test_work`` (``repeats`` runs, in one pytest session per side and step) under
    each interpreter. A busy machine only adds time (a sleeper waits for a core to wake on),
    so each side is read by its best times: B/A is the ratio of the best, its range runs from
    B's best over A's second best to B's second best over A's best; regressed when the whole
    range lies above ``1 + tolerance``, same when it lies below, else inconclusive (the
    ``gpufit ab`` verdict words)."""

    def __init__(self, folder: Path, repeats: int = 5, tolerance: float = 0.5) -> None:
        self.folder = folder
        self.repeats = repeats
        self.tolerance = tolerance
        self.calls: list[tuple[str, str]] = []
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "test_work.py").write_text(WORK_TEST, encoding="utf-8")

    def times(self, python: str) -> list[float]:
        out = self.folder / f"times-{len(self.calls)}-{hashlib.sha1(python.encode()).hexdigest()}"
        out.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(BISECT_TIMES=str(out), BISECT_REPEATS=str(self.repeats))
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # gpufit is not what is timed
        command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_work.py"]
        done = subprocess.run(
            command, cwd=self.folder, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return [float(line) for line in out.read_text().splitlines()]

    def __call__(self, a_python: str, b_python: str) -> Judgement:
        self.calls.append((a_python, b_python))
        a, b = self.times(a_python), self.times(b_python)
        a, b = sorted(a), sorted(b)
        ratio, low, high = b[0] / a[0], b[0] / a[1], b[1] / a[0]
        bound = 1 + self.tolerance
        verdict = "regressed" if low > bound else "same" if high < bound else "inconclusive"
        metric = MetricJudgement(TEST_ID, "work_s", "s", False, ratio, low, high, verdict)
        return Judgement(verdict, (metric,), json.dumps({"a": a, "b": b}))
