"""Real environments for the gpufit ab tests: venvs made with uv, holding a tiny package built
here as a wheel in two versions, v2 slower than v1 by a known factor.

``slowpkg.work()`` runs a busy loop of ``LOOPS * FACTOR`` iterations; v1 has FACTOR 1.0, a
slow version another. A venv reaches pytest and pytest-gpufit through a ``.pth`` line naming
this interpreter's site-packages and the repository (offline, nothing downloaded); its own
site-packages come first, so its slowpkg is the one imported. A venv made without that line
lacks pytest-gpufit, as a fresh one does.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOOPS = 200_000

MODULE = '''"""A package whose speed is its version: work() is a busy loop of a known length."""
__version__ = "{version}"
FACTOR = {factor}
LOOPS = {loops}


def work():
    total = 0
    for i in range(int(LOOPS * FACTOR)):
        total += i * i
    return total
'''

# The in-process target: a plain pytest test that measures slowpkg and records the figure
# through gpufit's measurement property (what suite checks record), as any test may.
TARGET_TEMPLATE = """import json
import time

import slowpkg


def _rate():
    # The fastest of 25 runs by {clock}: with process_time (the tests), a neighbour's job
    # that takes turns on our core of a shared box is not counted; perf_counter (the
    # benchmark's wall time) counts it, as a GPU timer counts a neighbour on the card.
    times = []
    for _ in range(25):
        began = time.{clock}()
        slowpkg.work()
        times.append(time.{clock}() - began)
    return slowpkg.LOOPS / min(times)


def test_speed(record_property):
    metrics = {"decode_tok_s": _rate(), "text": "the same greedy text"}
    if slowpkg.__version__ == "9.0":  # a version that measures a metric v1 does not
        metrics["ttft_ms"] = 1.0
    entry = {
        "suite": "ab-demo", "target": "slowpkg", "check": "throughput", "dtype": "-",
        "device": "cpu", "gpu": "cpu", "backend": "python", "metrics": metrics,
    }
    record_property("gpufit_measurement", json.dumps(entry))
"""
TARGET = TARGET_TEMPLATE.replace("{clock}", "process_time")
WALL_TARGET = TARGET_TEMPLATE.replace("{clock}", "perf_counter")
# The figure of a sleep as long as the version's factor says (10 ms for v1): what an A/A can be
# held to on a shared VM. The loop's fastest run differs from one fresh process to the next
# even on an idle dev-cpu (20.3 to 24.9 M/s over 16 processes, dips to 13.5 M), and an A/A of
# it read [0.953, 1.224] after 20 rounds in CI with the machine to itself; a sleep's, 0.2%.
SLEEP_TARGET = WALL_TARGET.replace("slowpkg.work()", "time.sleep(0.01 * slowpkg.FACTOR)")


# A tiny OpenAI-compatible engine in the package (tests/serving_fakes.py's server): its gap
# before each token is PACE_S * FACTOR, so v2 decodes slower by the package's factor. Started
# by a suite's launch: [{python}, -m, slowpkg.serve, {port}, {tag}]: the side's interpreter and
# the side's {tag} (an unfilled placeholder refuses to start).
SERVE = """import sys
import time

sys.path.insert(0, {tests!r})
from serving_fakes import PACE_S, FakeOpenAI  # noqa: E402

import slowpkg  # noqa: E402


def main():
    port, tag = int(sys.argv[1]), sys.argv[2]
    if "{{" in tag:
        sys.exit(f"slowpkg.serve: the tag {{tag}} was not filled in")
    with FakeOpenAI(port) as server:
        server.delay_s = PACE_S * slowpkg.FACTOR
        print(f"ready: slowpkg {{slowpkg.__version__}} tag {{tag}}", flush=True)
        while True:
            time.sleep(0.5)


if __name__ == "__main__":
    main()
"""

SERVED_SUITE = """suite: served
targets:
  - name: slow
    backend: openai
    device: cpu
    endpoint: http://127.0.0.1:{port}/v1
    launch: {command: ["{python}", "-m", "slowpkg.serve", "{port}", "{tag}"], ready_timeout_s: 60}
    checks:
      throughput: {prompt_tokens: 8, new_tokens: 8, warmup: 1, repeats: 3}
"""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(folder: Path, version: str, factor: float) -> Path:
    """A pure-Python wheel of slowpkg ``version`` (written by hand: no build backend needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"slowpkg-{version}.dist-info"
    files = {
        "slowpkg/__init__.py": MODULE.format(version=version, factor=factor, loops=LOOPS),
        "slowpkg/serve.py": SERVE.format(tests=str(REPO / "tests")),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: slowpkg\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    path = folder / f"slowpkg-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        lines = []
        for name, text in files.items():
            wheel.writestr(name, text)
            lines.append(_record_line(name, text.encode()))
        lines.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\n".join(lines) + "\n")
    return path


def uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).exists():
        raise RuntimeError("uv is not installed: pip install uv (the dev venv has it)")
    return found


def make_venv(folder: Path, wheels: Path | None, version: str | None, gpufit: bool = True) -> Path:
    """A uv venv with slowpkg ``version`` from ``wheels`` (offline); its python."""
    subprocess.run(
        [uv(), "venv", "--quiet", "--python", sys.executable, str(folder)],
        check=True,
        capture_output=True,
    )
    python = folder / "bin" / "python"
    if version is not None and wheels is not None:
        subprocess.run(
            [
                uv(),
                "pip",
                "install",
                "--quiet",
                "--offline",
                "--no-index",
                "--find-links",
                str(wheels),
                "--python",
                str(python),
                f"slowpkg=={version}",
            ],
            check=True,
            capture_output=True,
        )
    if gpufit:
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        ours = sysconfig.get_paths()["purelib"]
        (Path(site) / "zz_gpufit_dev.pth").write_text(f"{ours}\n{REPO}\n")
    return python
