"""Every plugin setting resolved in one place: ini < environment variable < command line.

Each ``Option`` carries its own parser and default (as pytest-timeout's options do); the plugin
and the ``gpufit`` command both read them from here.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.expect import parse_expect
from pytest_gpufit.numbers import parse_whole
from pytest_gpufit.skips import matches_any_reason
from pytest_gpufit.units import parse_percent

Parser = Callable[[str, str], Any]  # (text, where it came from) -> value

# A runner class name (the pool file's, and so --gpufit-runner's): job, artifact, file names.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# The ``plan`` of a ``gpufit plan --format github-matrix`` entry (--gpufit-plan).
DIGEST_PATTERN = r"^[0-9a-f]{16}$"


def text(value: str, source: str) -> str:
    return value


def whole_number(value: str, source: str) -> int:
    """A whole number >= 1 in ASCII digits (``int('²')`` would crash).

    >>> whole_number("2", "x")
    2
    """
    return parse_whole(value, source, text=True)


def gpu_indices(value: str, source: str) -> tuple[int, ...]:
    """``0,1`` -> (0, 1); ASCII digits only."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise GpufitError(f"{source}: expected GPU indices such as 0,1, got {value!r}")
    return tuple(int(p) for p in parts)


def expectation(value: str, source: str) -> str:
    """Checked here so that a malformed ``--gpufit-expect`` stops the session before it starts."""
    parse_expect(value, source)
    return value


def simulation(value: str, source: str) -> str:
    from pytest_gpufit.hardware.catalog import parse_setup  # late: it reads the catalog

    parse_setup(value, source)
    return value


def host_name(value: str, source: str) -> str:
    """This host's name in the fleet: printable, one line, at most 253 characters (a DNS name).

    >>> host_name("gpu-node-07", "x")
    'gpu-node-07'
    """
    if len(value) > 253 or not value.isprintable():
        raise GpufitError(
            f"{source}: expected a host name (printable, one line, at most 253 characters), "
            f"got {value[:80]!r}"
        )
    return value


AB_ENV_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"


def ab_pair(value: str, source: str) -> tuple[str, str]:
    """``ENV_A,ENV_B``: two names of environments declared by ``ab_envs``.

    >>> ab_pair("current, next", "--gpufit-ab")
    ('current', 'next')
    """
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(re.fullmatch(AB_ENV_NAME, p) for p in parts):
        raise GpufitError(
            f"{source}: expected two environment names, ENV_A,ENV_B (as declared by "
            f"gpufit_ab_envs), got {value!r}"
        )
    if parts[0] == parts[1]:
        raise GpufitError(f"{source}: A and B are both {parts[0]!r}; name two environments")
    return parts[0], parts[1]


def ab_env(value: str, source: str) -> tuple[str, tuple[str, ...]]:
    """One declared environment, ``NAME: KEY=VALUE [KEY=VALUE ...]``.

    >>> ab_env("next: python=.venv-next/bin/python image=vllm:0.9", "ini gpufit_ab_envs")
    ('next', ('python=.venv-next/bin/python', 'image=vllm:0.9'))
    """
    name, sep, rest = value.partition(":")
    items = tuple(rest.split())
    if not sep or not re.fullmatch(AB_ENV_NAME, name.strip()) or not items:
        raise GpufitError(
            f"{source}: expected NAME: KEY=VALUE [KEY=VALUE ...], e.g. "
            f"'next: python=.venv-next/bin/python', got {value!r}"
        )
    bad = [item for item in items if "=" not in item or item.startswith("=")]
    if bad:
        raise GpufitError(f"{source}: {name.strip()}: {bad[0]!r} is not KEY=VALUE")
    return name.strip(), items


def runner_name(value: str, source: str) -> str:
    """A runner class name as the pool file allows it (checked against the file later)."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise GpufitError(
            f"{source}: expected a runner class name of gpufit-runners.yaml (letters, digits, "
            f"'.', '_' or '-'), got {value!r}"
        )
    return value


def plan_digest(value: str, source: str) -> str:
    """The ``plan`` of a ``gpufit plan --format github-matrix`` entry: 16 hex digits."""
    if not re.fullmatch(DIGEST_PATTERN, value):
        raise GpufitError(
            f"{source}: expected the 'plan' of a gpufit plan matrix entry (16 hex digits, "
            f"e.g. ${{{{ matrix.plan }}}}), got {value!r}"
        )
    return value


def switch(value: str, source: str) -> bool:
    """On or off: true/false, yes/no, on/off, 1/0, in any case.

    >>> switch("True", "x"), switch("0", "x")
    (True, False)
    """
    lowered = value.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise GpufitError(f"{source}: expected true or false, got {value!r}")


def skip_pattern(value: str, source: str) -> str:
    """A regular expression a skip reason may match (checked here, used by ``re.search``); one
    that matches any reason would switch ``forbid_skips`` off unseen, so it is refused."""
    try:
        re.compile(value)
    except re.error as error:
        raise GpufitError(f"{source}: {value!r} is not a regular expression: {error}") from None
    if matches_any_reason(value):
        raise GpufitError(
            f"{source}: {value!r} matches any skip reason (it matches the empty text, or any "
            "one character), so no skip would fail; name the reasons you accept (such as "
            "\"could not import 'vllm'\"), or leave skips allowed (no --gpufit-forbid-skips)"
        )
    return value


def choice(*choices: str) -> Parser:
    def parse(value: str, source: str) -> str:
        if value not in choices:
            raise GpufitError(f"{source}: expected {' or '.join(choices)}, got {value!r}")
        return value

    parse.__doc__ = f"one of {', '.join(choices)}"
    return parse


@dataclass(frozen=True)
class Option:
    """One setting: its three spellings, its parser and its default (already parsed).

    A ``switch`` is a command-line flag without a value (``--gpufit-forbid-skips``); a setting
    of ``many`` values is repeated on the command line, one a line in the ini file and in the
    environment variable, and resolves to a tuple.
    """

    name: str
    help: str
    parse: Parser = text
    default: Any = None
    choices: tuple[str, ...] = ()
    switch: bool = False
    many: bool = False

    @property
    def flag(self) -> str:
        return "--gpufit-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "gpufit_" + self.name

    @property
    def env(self) -> str:
        return "GPUFIT_" + self.name.upper()

    def read(self, value: Any, source: str) -> Any:
        """Parse a value as given; set but empty is an error, never "use the default"."""
        if self.many:
            lines = value if isinstance(value, list) else str(value).splitlines()
            given = [str(line).strip() for line in lines if str(line).strip()]
        else:
            given = [str(value).strip()] if str(value).strip() else []
        if not given:
            example = self.help.split(";")[0]
            raise GpufitError(f"{source} is set but empty; unset it or give {example}")
        if self.many:
            return tuple(self.parse(one, source) for one in given)
        return self.parse(given[0], source)


def _option(
    name: str,
    help: str,
    *choices: str,
    parse: Parser = text,
    default: Any = None,
    switch: bool = False,
    many: bool = False,
) -> Option:
    parser = choice(*choices) if choices else parse
    return Option(name, help, parser, default, choices, switch, many)


OPTIONS = (
    _option(
        "on_missing",
        "what an unmet GPU requirement does: skip (default) or fail",
        "skip",
        "fail",
        default="skip",
    ),
    _option(
        "expect",
        "what this runner must have, e.g. 'count>=1,vram>=90GB,name~RTX PRO 6000'; judged on "
        "the real GPUs (never simulated ones), the session stops at once if they do not match",
        parse=expectation,
    ),
    _option(
        "simulate",
        "plan on catalog cards instead of the real ones: ID[,ID...] or N*ID "
        "(e.g. 2*h100-sxm); nothing runs on a GPU, and it cannot be combined with "
        "on_missing=fail (simulation plans, it never gates)",
        parse=simulation,
    ),
    _option(
        "devices",
        "GPU indices (after CUDA_VISIBLE_DEVICES) that count, e.g. 0,1",
        parse=gpu_indices,
    ),
    _option("report", "write a JSON report of the inventory and every verdict to this path"),
    _option(
        "baseline",
        "baselines: off (default), compare (against the accepted baseline of this "
        "GPU model) or save (record this run as the accepted baseline)",
        "off",
        "compare",
        "save",
        default="off",
    ),
    _option("baseline_dir", "where baselines are stored", default=".gpufit/baselines"),
    _option(
        "baseline_tolerance",
        "default tolerance of every baseline metric, e.g. 5%",
        parse=parse_percent,
        default=0.05,
    ),
    _option(
        "gpus_per_worker",
        "with pytest-xdist: GPUs each worker gets (default 1); -n auto then starts one worker "
        "per group; more workers than groups share GPUs, which the session says loudly "
        "(a warning in the header and the summary)",
        parse=whole_number,
        default=1,
    ),
    _option(
        "summary",
        "write a Markdown summary here (also appended to $GITHUB_STEP_SUMMARY when that is set "
        "and the session used gpufit)",
    ),
    _option(
        "host",
        "this host's name in the fleet baseline store, e.g. gpu-node-07 (default: the "
        "hostname); set it where the hostname changes per job (a runner pod or container)",
        parse=host_name,
    ),
    _option(
        "fleet_tolerance",
        "e.g. 15%; with baseline=compare, fail this host when a metric of this run sits "
        "further than this from the median of the other hosts' latest runs of the same GPU "
        "model and suite (needs 2 other hosts)",
        parse=parse_percent,
    ),
    _option(
        "runner",
        "the runner class of this gate job in the runner-pool file, e.g. h100x2: keep the "
        "items `gpufit plan` assigns to it (the rest are deselected) and judge its expect on "
        "the real GPUs, besides any --gpufit-expect",
        parse=runner_name,
    ),
    _option(
        "runners",
        "the runner-pool file that --gpufit-runner names a class of, relative to the rootdir "
        "(default gpufit-runners.yaml)",
        default="gpufit-runners.yaml",
    ),
    _option(
        "plan",
        "with --gpufit-runner: the 'plan' of this job's gpufit plan matrix entry; the job fails "
        "unless it collects the same items and places them the same way as the plan job did "
        "(else a check the plan job never saw could run nowhere)",
        parse=plan_digest,
    ),
    _option(
        "forbid_skips",
        "true on a GPU runner: every skip of the run fails, naming its reason (skip marks, "
        "pytest.skip, importorskip while collecting, gpufit's own skips, an xfail that "
        "stopped its test before it ran, pytest.exit with code 0), unless "
        "--gpufit-allow-skip accepts the reason",
        parse=switch,
        default=False,
        switch=True,
    ),
    _option(
        "allow_skip",
        "with forbid_skips: a regular expression of skip reasons to accept, e.g. "
        "'needs 2 GPUs'; repeat the option (one a line in the ini key and the variable); a "
        "reason that any of them matches (re.search) stays a skip",
        parse=skip_pattern,
        default=(),
        many=True,
    ),
    _option(
        "ab",
        "ENV_A,ENV_B: run this selection as an A/B of two environments declared by ab_envs "
        "(each side in its own pytest sessions, interleaved, as gpufit ab), judge every metric "
        "B against A with a 95% interval, and exit 1 on a regression or an inconclusive metric",
        parse=ab_pair,
    ),
    _option(
        "ab_envs",
        "the environments --gpufit-ab names, one a line: 'NAME: KEY=VALUE ...', e.g. "
        "'next: python=.venv-next/bin/python'; python= is the interpreter, any other KEY "
        "fills {KEY} in launch commands",
        parse=ab_env,
        default=(),
        many=True,
    ),
    _option(
        "ab_rounds",
        "with ab: at most this many rounds (default 20); the run stops once every metric "
        "has a verdict",
        parse=whole_number,
        default=20,
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """Resolved values; ``sources`` says where each non-default one came from."""

    on_missing: str
    expect: str | None
    simulate: str | None
    devices: tuple[int, ...] | None
    report: str | None
    baseline: str
    baseline_dir: str
    baseline_tolerance: float
    gpus_per_worker: int
    summary: str | None
    host: str | None = None
    fleet_tolerance: float | None = None
    runner: str | None = None
    runners: str = "gpufit-runners.yaml"
    plan: str | None = None
    forbid_skips: bool = False
    allow_skip: tuple[str, ...] = ()
    ab: tuple[str, str] | None = None
    ab_envs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ab_rounds: int = 20
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def fail_on_missing(self) -> bool:
        return self.on_missing == "fail"

    def source(self, name: str) -> str:
        """Where a setting came from: ``--gpufit-simulate``, ``GPUFIT_SIMULATE``, ``ini ...``."""
        return self.sources.get(name, "default")

    @property
    def explicit(self) -> bool:
        """Whether any gpufit option was set (from any source)."""
        return bool(self.sources)


def defaults() -> Settings:
    return Settings(**{o.name: o.default for o in OPTIONS})


def resolve(
    cli: Callable[[str], Any], ini: Callable[[str], Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve every option; a bad value is an error that names where it came from.

    ``cli(name)`` and ``ini(key)`` return None for "not set"; any other value, the empty
    string included, counts as set.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        value, source = None, None
        for candidate, where in (
            (ini(option.ini), f"ini {option.ini}"),
            (environ.get(option.env), option.env),
            (cli(option.name), option.flag),
        ):
            if candidate is not None:
                value, source = candidate, where
        if source is None:
            values[option.name] = option.default
            continue
        values[option.name] = option.read(value, source)
        sources[option.name] = source
    return Settings(**values, sources=sources)


def ini_reader(config: pytest.Config) -> Callable[[str], Any]:
    """``resolve``'s ini getter for a parsed pytest config: a key's value, or None where
    neither the configuration file nor ``-o`` sets it."""

    def get(key: str) -> Any:
        value = config.getini(key)
        if value is None or value not in ("", []):
            return value  # pytest 9 gives the default, None, for an unset key
        # Older pytest gives "" (or []) for unset keys too: tell "unset" from "set but empty".
        overrides = getattr(config.known_args_namespace, "override_ini", None) or []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # config.inicfg, pytest 9
            in_file = key in config.inicfg
        given = in_file or any(o.split("=", 1)[0].strip() == key for o in overrides)
        return value if given else None

    return get


def gate_conflicts(settings: Settings) -> None:
    """Simulation plans and never gates: refuse it together with the fail policy, and with
    baselines (a simulated run would store, and with save accept, catalog estimates under a
    real GPU model's name, replacing the accepted run its gate compares against)."""
    if settings.simulate and settings.baseline != "off":
        raise GpufitError(
            f"baseline={settings.baseline} (from {settings.source('baseline')}) and simulate="
            f"{settings.simulate!r} (from {settings.source('simulate')}) cannot be combined: "
            "a simulated run measures nothing on a GPU and must never write or judge "
            "baselines; unset one of them"
        )
    if (
        settings.fleet_tolerance is not None
        and settings.fail_on_missing
        and (settings.baseline == "off")
    ):
        raise GpufitError(
            f"fleet_tolerance (from {settings.source('fleet_tolerance')}) judges this run "
            f"against the fleet's, and baseline=off (from {settings.source('baseline')}) "
            "measures nothing into the store: under on_missing=fail (from "
            f"{settings.source('on_missing')}) the fleet check would silently not run; set "
            "--gpufit-baseline=compare, or unset the fleet tolerance"
        )
    if settings.allow_skip and not settings.forbid_skips:
        raise GpufitError(
            f"allow_skip (from {settings.source('allow_skip')}) accepts skip reasons that "
            f"forbid_skips would fail, and forbid_skips is off (from "
            f"{settings.source('forbid_skips')}): the allow-list would do nothing; set "
            "--gpufit-forbid-skips, or unset the allow-list"
        )
    if settings.simulate and settings.forbid_skips:
        raise GpufitError(
            f"forbid_skips (from {settings.source('forbid_skips')}) and simulate="
            f"{settings.simulate!r} (from {settings.source('simulate')}) cannot be combined: "
            "a simulated run skips every gated test it plans; unset one of them"
        )
    if settings.plan and not settings.runner:
        raise GpufitError(
            f"plan={settings.plan!r} (from {settings.source('plan')}) checks the items a runner "
            "class keeps against the plan job's; name the class with --gpufit-runner"
        )
    if settings.simulate and settings.fail_on_missing:
        raise GpufitError(
            f"on_missing=fail (from {settings.source('on_missing')}) and simulate="
            f"{settings.simulate!r} (from {settings.source('simulate')}) cannot be combined: "
            "a simulated run plans on catalog cards and must never pass a gate; "
            "unset one of them"
        )
