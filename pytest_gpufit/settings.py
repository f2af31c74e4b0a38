"""Every plugin setting resolved in one place: ini < environment variable < command line."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.units import parse_percent


@dataclass(frozen=True)
class Option:
    """One setting with its three spellings."""

    name: str
    help: str
    choices: tuple[str, ...] = ()
    default: str | None = None

    @property
    def flag(self) -> str:
        return "--gpufit-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "gpufit_" + self.name

    @property
    def env(self) -> str:
        return "GPUFIT_" + self.name.upper()


OPTIONS = (
    Option(
        "on_missing",
        "what an unmet GPU requirement does: skip (default) or fail",
        ("skip", "fail"),
        "skip",
    ),
    Option(
        "expect",
        "what this runner must have, e.g. 'count>=1,vram>=90GB,name~RTX PRO 6000'; "
        "the session stops at once if the machine does not match",
    ),
    Option(
        "simulate",
        "plan on catalog cards instead of the real ones: ID[,ID...] or N*ID "
        "(e.g. 2*h100-sxm); nothing runs on a GPU",
    ),
    Option("devices", "GPU indices (after CUDA_VISIBLE_DEVICES) that count, e.g. 0,1"),
    Option("report", "write a JSON report of the inventory and every verdict to this path"),
    Option(
        "baseline",
        "baselines: off (default), compare (against the accepted baseline of this "
        "GPU model) or save (record this run as the accepted baseline)",
        ("off", "compare", "save"),
        "off",
    ),
    Option("baseline_dir", "where baselines are stored", default=".gpufit/baselines"),
    Option(
        "baseline_tolerance", "default tolerance of every baseline metric, e.g. 5%", default="5%"
    ),
    Option(
        "gpus_per_worker",
        "with pytest-xdist: GPUs each worker gets (default 1); -n auto then starts one worker "
        "per group",
        default="1",
    ),
    Option(
        "summary",
        "write a Markdown summary here (also appended to $GITHUB_STEP_SUMMARY when that is set)",
    ),
)


@dataclass(frozen=True)
class Settings:
    on_missing: str = "skip"
    expect: str | None = None
    simulate: str | None = None
    devices: tuple[int, ...] | None = None
    report: str | None = None
    baseline: str = "off"
    baseline_dir: str = ".gpufit/baselines"
    baseline_tolerance: float = 0.05
    summary: str | None = None
    gpus_per_worker: int = 1

    @property
    def fail_on_missing(self) -> bool:
        return self.on_missing == "fail"


def _devices(text: str, source: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise GpufitError(f"{source}: expected GPU indices such as 0,1, got {text!r}")
    return tuple(int(p) for p in parts)


def resolve(
    cli: Callable[[str], Any], ini: Callable[[str], Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve every option; a bad value is an error that names where it came from."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value, source = option.default, "default"
        for candidate, where in (
            (ini(option.ini), f"ini {option.ini}"),
            (environ.get(option.env), option.env),
            (cli(option.name), option.flag),
        ):
            if candidate not in (None, ""):
                value, source = str(candidate).strip(), where
        if option.choices and value not in option.choices:
            raise GpufitError(f"{source}: expected {' or '.join(option.choices)}, got {value!r}")
        if option.name == "devices" and value:
            values[option.name] = _devices(value, source)
        elif option.name == "gpus_per_worker":
            if not str(value).isdigit() or int(str(value)) < 1:
                raise GpufitError(f"{source}: expected a whole number >= 1, got {value!r}")
            values[option.name] = int(str(value))
        elif option.name == "baseline_tolerance":
            values[option.name] = parse_percent(value, source)
        else:
            values[option.name] = value
    return Settings(**values)
