"""Side B of the GPU tier's A/B step (scripts/gpu-tier.sh, GPUFIT_TIER_AB=1), made offline.

    python scripts/gpu_tier_ab_env.py make VENV [--wheels DIR] [--json PATH]
    python scripts/gpu_tier_ab_env.py dry-suite OUT_DIR MODEL_DIR

``make`` builds VENV from the running interpreter (side A, the machine's python): a venv
without pip whose ``gpufit-tier-ab.pth`` adds A's site folders after its own (``site.addsitedir``,
so A's own ``.pth`` files, an editable pytest-gpufit among them, work in B too). Every wheel in
DIR (``.whl-ab``, from ``GPUFIT_WHEELS_AB=VERSION scripts/gpu-tier-wheels.sh``) goes into B's
own site-packages with ``--no-deps --no-index``, ahead of A's: a transformers wheel there makes
the step a real A/B of two transformers versions. Without one, B holds exactly A's packages:
an A/A, which measures the noise and must end with no regression. It prints B's interpreter
last and writes what it planned (``A/A`` or ``A/B``, A's and B's versions) to ``--json``.

``dry-suite`` writes OUT_DIR/ab-dry.gpufit.yaml: tests/gpu/ab.gpufit.yaml on the CPU with the
tiny model at MODEL_DIR and sizes a loaded 2-core machine runs in seconds (the dry run).

Bad input ends with one line on stderr, ``gpu_tier_ab_env: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion

from pytest_gpufit.ab.output import changed
from pytest_gpufit.ab.run import fingerprint
from pytest_gpufit.ab.sides import make_side
from pytest_gpufit.errors import GpufitError

SUITE = Path(__file__).resolve().parent.parent / "tests" / "gpu" / "ab.gpufit.yaml"
PTH = "gpufit-tier-ab.pth"
DRY_SIZES = {
    "generates": {"prompt_tokens": 8, "max_new_tokens": 8},
    "throughput": {"prompt_tokens": 32, "new_tokens": 8, "warmup": 1, "repeats": 3},
}
# Run under side A: the folders its packages come from (the user site where it is on).
_SITES = """
import json, os, site
dirs = list(site.getsitepackages())
if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
    dirs.append(site.getusersitepackages())
print(json.dumps([d for d in dirs if os.path.isdir(d)]))
"""


@dataclass(frozen=True)
class Wheel:
    """A carried wheel: its file name and the distribution and version it holds."""

    file: str
    name: str  # canonical (PEP 503): lower case, "-" for any run of "-", "_" and "."
    version: str


def parse_wheel(file: str, where: str) -> Wheel:
    """The distribution (its canonical name) and version a wheel's file name holds.

    >>> parse_wheel("transformers-5.24.0-py3-none-any.whl", ".whl-ab")
    Wheel(file='transformers-5.24.0-py3-none-any.whl', name='transformers', version='5.24.0')
    >>> parse_wheel("transformers.zip", ".whl-ab")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: .whl-ab/transformers.zip: not a wheel ...
    """
    try:
        name, version, _, _ = parse_wheel_filename(file)
    except (InvalidWheelFilename, InvalidVersion):
        raise GpufitError(
            f"{where}/{file}: not a wheel (NAME-VERSION-PY-ABI-PLATFORM.whl); keep only wheels "
            f"there (GPUFIT_WHEELS_AB=VERSION scripts/gpu-tier-wheels.sh writes them)"
        ) from None
    return Wheel(file, name, str(version))


def carried(files: Sequence[str], where: str) -> tuple[Wheel, ...]:
    """The wheels of a folder's listing, one per distribution (two would fight over B).

    >>> [w.version for w in carried(["transformers-5.24.0-py3-none-any.whl"], "d")]
    ['5.24.0']
    >>> carried(["a-1-py3-none-any.whl", "a-2-py3-none-any.whl"], "d")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: d holds two versions of a (1 and 2): ...
    """
    out: dict[str, Wheel] = {}
    for file in sorted(files):
        wheel = parse_wheel(file, where)
        if wheel.name in out:
            raise GpufitError(
                f"{where} holds two versions of {wheel.name} ({out[wheel.name].version} and "
                f"{wheel.version}): side B can hold one; delete the other"
            )
        out[wheel.name] = wheel
    return tuple(out.values())


def planned_changes(a_packages: Mapping[str, str], wheels: Sequence[Wheel]) -> list[str]:
    """What B will hold that A does not: a carried wheel of A's own version changes nothing.

    >>> w = Wheel("transformers-5.24.0-py3-none-any.whl", "transformers", "5.24.0")
    >>> planned_changes({"transformers": "5.25.0"}, [w])
    ['transformers 5.25.0 -> 5.24.0']
    >>> planned_changes({"transformers": "5.24.0"}, [w])
    []
    """
    have: dict[str, str] = {canonicalize_name(n): v for n, v in a_packages.items()}
    return [
        f"{w.name} {have.get(w.name) or 'none'} -> {w.version}"
        for w in wheels
        if have.get(w.name) != w.version
    ]


def kind(changes: Sequence[str]) -> str:
    """``A/B`` when B differs from A in some package, else ``A/A`` (the noise alone).

    >>> kind([]), kind(["transformers 5.25.0 -> 5.24.0"])
    ('A/A', 'A/B')
    """
    return "A/B" if changes else "A/A"


def pth_text(site_dirs: Sequence[str]) -> str:
    """The ``.pth`` that puts A's site folders after B's own, their ``.pth`` files honoured.

    >>> print(pth_text(["/usr/lib/python3/dist-packages"]), end="")
    import site; site.addsitedir('/usr/lib/python3/dist-packages')
    """
    if not site_dirs:
        raise GpufitError("side A reports no site-packages folder: B would lack its packages")
    return "".join(f"import site; site.addsitedir({d!r})\n" for d in site_dirs)


def dry_suite(suite: dict[str, Any], model: str) -> dict[str, Any]:
    """The A/B suite rewritten for the CPU dry run: the tiny model, small sizes, same checks.

    >>> s = {"suite": "x", "targets": [{"model": "qwen3-0.6b", "context": 4096,
    ...      "checks": {"loads": {}, "throughput": {"repeats": 9}}}]}
    >>> t = dry_suite(s, "/m")["targets"][0]
    >>> t["model"], t["device"], t["checks"]["throughput"]["repeats"], "context" in t
    ('/m', 'cpu', 3, False)
    """
    for target in suite["targets"]:
        target.update(model=model, device="cpu")
        target.pop("context", None)  # the tiny model's own window is far smaller
        for name, sizes in DRY_SIZES.items():
            if name in target["checks"]:
                target["checks"][name].update(sizes)
    suite["suite"] = f"{suite['suite']}-dry-run"
    return suite


def site_dirs(python: str) -> list[str]:
    done = subprocess.run([python, "-c", _SITES], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise GpufitError(f"side A ({python}) did not report its site folders: {done.stderr}")
    dirs: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return dirs


def _run(command: list[str], what: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()[-600:]
        raise GpufitError(f"{what} failed (exit {done.returncode}): {said}")
    return done.stdout


def make(venv: Path, wheels_dir: Path | None) -> dict[str, Any]:
    """Build side B at ``venv`` from this interpreter; return what was planned and found."""
    where = str(wheels_dir)
    folder = wheels_dir if wheels_dir is not None and wheels_dir.is_dir() else None
    if wheels_dir is not None and wheels_dir.exists() and folder is None:
        raise GpufitError(f"{where}: not a folder; give the folder of the carried wheels")
    wheels = carried(sorted(p.name for p in folder.iterdir()), where) if folder else ()
    a = make_side("A", [f"python={sys.executable}"], "side A")
    if venv.exists():
        raise GpufitError(f"{venv}: already there; give a new folder (or remove it)")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], f"python -m venv {venv}")
    b_python = venv / "bin" / "python"
    paths = [str(b_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    purelib = _run(paths, "asking B for its site-packages").strip()
    (Path(purelib) / PTH).write_text(pth_text(site_dirs(sys.executable)), encoding="utf-8")
    if folder and wheels:
        install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
        install += ["--no-warn-conflicts", "--target", purelib]
        _run(install + [str(folder / w.file) for w in wheels], f"installing {where} into B")
    try:
        b = make_side("B", [f"python={b_python}"], "side B")
        _run([str(b_python), "-c", "import transformers"], "importing transformers in B")
    except GpufitError as error:
        raise GpufitError(
            f"side B ({b_python}) does not work: {error}. A carried wheel may need a newer "
            "dependency than A has (transformers 5.24.0 needs huggingface-hub>=1.31,<3): carry "
            f"that wheel in {where} too, or a transformers version A's dependencies fit"
        ) from None
    planned = planned_changes(a.packages, wheels)
    # Measured, as gpufit ab will see the two sides: their fingerprints' differences.
    found = changed(fingerprint(a, {}), fingerprint(b, {}))
    if kind(found) != kind(planned):
        said_planned = ", ".join(planned) or "no change"
        said_found = ", ".join(found) or "the same packages as A"
        raise GpufitError(
            f"side B ({b_python}) was planned as an {kind(planned)} ({said_planned}) but holds "
            f"{said_found}: remove {venv} and look at what {where} holds"
        )
    return {
        "kind": kind(found),
        "changes": found,
        "planned_changes": planned,
        "wheels": [w.file for w in wheels],
        "a": {"python": a.python, "transformers": a.packages.get("transformers")},
        "b": {"python": str(b_python), "transformers": b.packages.get("transformers")},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="build side B's venv")
    mk.add_argument("venv", type=Path)
    mk.add_argument("--wheels", type=Path, help="wheels to install into B (.whl-ab)")
    mk.add_argument("--json", type=Path, help="write the plan and both sides' versions here")
    dry = sub.add_parser("dry-suite", help="write OUT_DIR/ab-dry.gpufit.yaml for the CPU")
    dry.add_argument("out", type=Path)
    dry.add_argument("model", type=Path)
    args = parser.parse_args(argv)
    try:
        # Where the results go is checked before anything is built: a venv made and then
        # not described would be left behind.
        where = args.out if args.command == "dry-suite" else (args.json and args.json.parent)
        if where and not where.is_dir():
            flag = "OUT_DIR" if args.command == "dry-suite" else "--json"
            raise GpufitError(f"{flag}: {where} is not a folder; make it first or give another")
        if args.command == "dry-suite":
            if not (args.model / "config.json").is_file():
                raise GpufitError(f"{args.model}: no config.json; give a model folder")
            suite = dry_suite(yaml.safe_load(SUITE.read_text()), str(args.model.resolve()))
            path = args.out / "ab-dry.gpufit.yaml"
            path.write_text(yaml.safe_dump(suite, sort_keys=False))
            print(path)
            return 0
        plan = make(args.venv.absolute(), args.wheels)
    except GpufitError as error:
        print(f"gpu_tier_ab_env: {error}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(plan, indent=1) + "\n")
    changes = ", ".join(plan["changes"]) or "nothing (the same packages as A)"
    print(f"ab: {plan['kind']}; B changes {changes}", file=sys.stderr)
    print(plan["b"]["python"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
