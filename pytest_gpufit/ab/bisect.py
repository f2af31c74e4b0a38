"""``gpufit bisect``: which package change between environment A and environment B carries a
regression. The decisions only, pure: requirement sets read into pins, the changes between
them, the changes that cannot be installed apart grouped, and the search.

The search takes two callables, so it runs on synthetic judges in the tests:
``env(names)`` -> the interpreter of A with the changes of those package names applied, and
``judge(a_python, b_python)`` -> a :class:`Judgement` (``gpufit ab`` in real use,
``bisect_run.ab_judge``). Every judgement compares against A itself: the same reference for
every step, so each step's interval reads on its own.

- Few units (``<= few``, default 3): each on A alone (``A + unit`` vs A).
- Many: halving over one order of the units, as ``git bisect`` over commits: the environments
  ``A + units[:k]`` from A (good) to B (bad); the first bad prefix's last unit is the suspect,
  then confirmed by measuring it alone on A.
- The culprit's answer: its versions, the interval of ``A + it`` against A (with it) and of
  ``B - it`` against A (without it: the rest of the upgrade).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from pytest_gpufit.errors import GpufitError

FEW = 3
VERDICTS = ("regressed", "improved", "same", "inconclusive")
SELF = "pytest-gpufit"  # installed by bisect itself into every environment, never bisected


@dataclass(frozen=True)
class Pin:
    """One package of a requirement set, exactly: ``name==version`` or ``name @ url``."""

    name: str  # canonical (PEP 503): torch, nvidia-cublas-cu12
    version: str  # the version, or the direct reference's URL
    line: str  # what the installer is given
    where: str  # file:line it came from

    @property
    def shown(self) -> str:
        return self.version


@dataclass(frozen=True)
class RequirementSet:
    """The pins of one side, by canonical name, and what was left out (and why)."""

    pins: Mapping[str, Pin]
    source: str
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        return [self.pins[n].line for n in sorted(self.pins)]


def parse_pin(text: str, where: str) -> Pin:
    """One pinned requirement; anything looser is an error that says what bisect needs.

    >>> parse_pin("Torch==2.5.1+cu124 ; python_version >= '3.9'", "b.txt:3").line
    'torch==2.5.1+cu124'
    >>> parse_pin("numpy>=2", "b.txt:4")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: b.txt:4: 'numpy>=2': not one exact version; bisect ...
    """
    try:
        req = Requirement(text)
    except InvalidRequirement as error:
        raise GpufitError(f"{where}: {text!r}: not a requirement ({error})") from None
    name = canonicalize_name(req.name)
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    if req.url:
        return Pin(name, req.url, f"{name}{extras} @ {req.url}", where)
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator not in ("==", "==="):
        raise GpufitError(
            f"{where}: {text!r}: not one exact version; bisect needs name==version "
            "(as pip freeze and uv pip compile write them)"
        )
    version = specs[0].version
    if "*" in version:
        raise GpufitError(f"{where}: {text!r}: a wildcard is not one exact version")
    return Pin(name, version, f"{name}{extras}=={version}", where)


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Lines with ``\\`` continuations joined (pip-compile's ``--hash`` layout), comments cut."""
    start, parts = 0, list[str]()
    for number, raw in enumerate(text.splitlines(), 1):
        if not parts:
            start = number
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = " ".join(p.strip() for p in parts).strip()
        parts = []
        if joined:
            yield start, joined


def parse_requirements(text: str, source: str) -> RequirementSet:
    """A requirements or lock file of pins (``pip freeze``, ``uv pip compile``, ``uv export``):
    one ``name==version`` (or ``name @ url``) per line; ``--hash`` options are dropped (the
    intermediate sets mix two files' hashes); pytest-gpufit itself and editable installs are
    left out, said in ``notes``, and so is a pin whose environment marker does not hold for
    the running interpreter (a universal lock's other platforms). A package twice, a looser
    specifier or an option that changes where packages come from is an error naming the
    line."""
    pins: dict[str, Pin] = {}
    notes: list[str] = []
    for number, line in _logical_lines(text):
        where = f"{source}:{number}"
        if line.startswith(("-e ", "--editable")):
            notes.append(f"{where}: editable install left out (a working tree, not a version)")
            continue
        if line.startswith("-"):
            raise GpufitError(
                f"{where}: {line.split()[0]!r}: options are not read here; give package sources "
                "to gpufit bisect (--find-links, --offline, or uv's UV_INDEX_URL)"
            )
        requirement = re.sub(r"\s--hash[= ]\S+", "", f" {line}").strip()
        pin = parse_pin(requirement, where)
        marker = Requirement(requirement).marker
        if marker is not None and not marker.evaluate({"extra": ""}):
            notes.append(f"{where}: {pin.line} left out: not for this interpreter ({marker})")
            continue
        if pin.name in pins:
            raise GpufitError(f"{where}: {pin.name} again (first at {pins[pin.name].where})")
        if pin.name == SELF:
            notes.append(f"{where}: {SELF} left out (bisect installs its own into every side)")
            continue
        pins[pin.name] = pin
    if not pins:
        raise GpufitError(f"{source}: no pinned package (expected name==version lines)")
    return RequirementSet(pins, source, tuple(notes))


def apply_changes(base: RequirementSet, changes: Sequence[str], option: str) -> RequirementSet:
    """B as A plus ``--change name==version`` items (a package A lacks is added)."""
    pins = dict(base.pins)
    seen: dict[str, str] = {}
    for index, text in enumerate(changes, 1):
        where = f"{option} #{index}"
        pin = parse_pin(text, where)
        if pin.name in seen:
            raise GpufitError(f"{where}: {pin.name} again (first as {seen[pin.name]})")
        seen[pin.name] = text
        pins[pin.name] = pin
    return RequirementSet(pins, f"A with {', '.join(changes)}", base.notes)


@dataclass(frozen=True)
class Change:
    """One package whose pin differs between A and B (None: absent on that side)."""

    name: str
    a: Pin | None
    b: Pin | None

    def describe(self) -> str:
        if self.a is None:
            return f"{self.name} (added) {_version(self.b)}"
        if self.b is None:
            return f"{self.name} {_version(self.a)} (removed)"
        return f"{self.name} {_version(self.a)} -> {_version(self.b)}"

    def to_dict(self) -> dict[str, Any]:
        return {"package": self.name, "a": _version(self.a), "b": _version(self.b)}


def _version(pin: Pin | None) -> str | None:
    return None if pin is None else pin.version


def change_set(a: RequirementSet, b: RequirementSet) -> tuple[Change, ...]:
    """The packages whose pins differ, in name order; none is an error (nothing to bisect)."""
    changes = tuple(
        Change(name, a.pins.get(name), b.pins.get(name))
        for name in sorted(set(a.pins) | set(b.pins))
        if _line(a.pins.get(name)) != _line(b.pins.get(name))
    )
    if not changes:
        raise GpufitError(
            f"A ({a.source}) and B ({b.source}) pin the same packages at the same versions: "
            "nothing to bisect"
        )
    return changes


def _line(pin: Pin | None) -> str | None:
    return None if pin is None else pin.line


def applied(a: RequirementSet, changes: Iterable[Change], names: Iterable[str]) -> list[str]:
    """The requirement lines of A with the changes of ``names`` applied, sorted."""
    pins = {n: p.line for n, p in a.pins.items()}
    wanted = set(names)
    for change in changes:
        if change.name not in wanted:
            continue
        if change.b is None:
            pins.pop(change.name, None)
        else:
            pins[change.name] = change.b.line
    return [pins[n] for n in sorted(pins)]


@dataclass(frozen=True)
class Unit:
    """Changes that move together: one package, or a group (declared, or found when the
    installer could not put them apart; ``reason`` says which)."""

    changes: tuple[Change, ...]
    reason: str = ""

    @property
    def names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.changes)

    @property
    def label(self) -> str:
        return "+".join(c.name for c in self.changes)

    def describe(self) -> str:
        text = ", ".join(c.describe() for c in self.changes)
        if len(self.changes) == 1:
            return text
        return f"group [{text}] ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return {"changes": [c.to_dict() for c in self.changes], "group_reason": self.reason}


def declared_units(changes: Sequence[Change], groups: Sequence[str]) -> list[Unit]:
    """Each change its own unit, except the changes a ``--group`` names (comma-separated
    names or shell patterns: ``torch,torchvision,nvidia-*``), which move as one. A group
    entry that matches no change is fine: a standing group list outlives one upgrade."""
    taken: dict[str, str] = {}
    units: list[Unit] = []
    for spec in groups:
        patterns = [canonicalize_name(p) if "*" not in p else p.lower() for p in spec.split(",")]
        members = tuple(
            c for c in changes if any(fnmatch.fnmatchcase(c.name, p) for p in patterns if p)
        )
        for c in members:
            if c.name in taken:
                raise GpufitError(f"--group {spec}: {c.name} is already in --group {taken[c.name]}")
            taken[c.name] = spec
        if members:
            units.append(Unit(members, f"declared: --group {spec}"))
    units += [Unit((c,)) for c in changes if c.name not in taken]
    return sorted(units, key=lambda u: min(u.names))


Resolves = Callable[[frozenset[str]], "str | None"]


def mentioned(text: str) -> frozenset[str]:
    """The package names a resolver's message mentions, canonical."""
    return frozenset(canonicalize_name(w) for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", text))


def group_units(units: Sequence[Unit], resolves: Resolves, prefixes: bool = False) -> list[Unit]:
    """Merge units that cannot be installed apart. ``resolves(names)`` is None when A with the
    changes of ``names`` resolves, else the installer's message. A unit must resolve both on A
    alone and left out of B (``B - unit``), the two environments the search builds around it;
    with ``prefixes`` (the halving order) every ``A + units[:k]`` must resolve too. A unit that
    does not takes the units the message names (else the first that makes it resolve, else
    all); the merged unit keeps the message as its reason."""
    every = frozenset().union(*(u.names for u in units))
    units = sorted(units, key=lambda u: min(u.names))
    asked: dict[frozenset[str], str | None] = {}

    def check(names: frozenset[str]) -> str | None:
        if not names or names == every:
            return None  # A and B, built before the search
        if names not in asked:
            asked[names] = resolves(names)
        return asked[names]

    def trouble(names: frozenset[str]) -> str | None:
        return check(names) or check(every - names)

    while True:
        index = 0
        while index < len(units):
            message = trouble(units[index].names)
            if message is None:
                index += 1
                continue
            first, merged = message, [units[index]]
            while message is not None:
                rest = [u for u in units if u not in merged]
                named = [u for u in rest if u.names & mentioned(message)]
                if not named:
                    names = _names(merged)
                    single = next((u for u in rest if trouble(names | u.names) is None), None)
                    named = rest if single is None else [single]
                merged += named
                message = trouble(_names(merged))
            units = _merge(units, merged, first)
            index = 0  # a merged unit may now conflict with one already checked
        if not prefixes:
            return units
        failing = next(
            ((k, m) for k in range(1, len(units)) if (m := check(_names(units[:k])))), None
        )
        if failing is None:
            return units
        k, message = failing
        inside = [u for u in units[:k] if u.names & mentioned(message)] or [units[k - 1]]
        outside = [u for u in units[k:] if u.names & mentioned(message)] or [units[k]]
        units = _merge(units, inside + outside, message)


def _names(units: Iterable[Unit]) -> frozenset[str]:
    return frozenset().union(*(u.names for u in units))


def _merge(units: Sequence[Unit], merged: Sequence[Unit], message: str) -> list[Unit]:
    changes = tuple(sorted((c for u in merged for c in u.changes), key=lambda c: c.name))
    reason = "; ".join(
        [f"installs only together: {summary(message)}", *(u.reason for u in merged if u.reason)]
    )
    rest = [u for u in units if u not in merged]
    return sorted([*rest, Unit(changes, reason)], key=lambda u: min(u.names))


def summary(message: str, limit: int = 240) -> str:
    """The resolver's explanation in one line: its 'Because ...' sentence where it has one."""
    text = " ".join(line.strip(" ╰─▶│") for line in message.splitlines() if line.strip())
    because = text.find("Because")
    text = text[because:] if because >= 0 else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- judgements ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricJudgement:
    """One metric of a ``gpufit ab`` run: B over A with its interval, and the verdict."""

    test: str
    metric: str
    unit: str
    higher_is_better: bool
    ratio: float | None
    low: float | None
    high: float | None
    verdict: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.test, self.metric)

    def describe(self) -> str:
        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.3g}"

        return (
            f"{self.test} {self.metric}: B/A {num(self.ratio)} "
            f"[{num(self.low)}, {num(self.high)}] {self.verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "metric": self.metric,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "ratio": self.ratio,
            "low": self.low,
            "high": self.high,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Judgement:
    """What one A/B said: the overall verdict and each metric's."""

    verdict: str
    metrics: tuple[MetricJudgement, ...] = ()
    source: str = ""  # where it was read from (the ab JSON)

    def state(self, targets: frozenset[tuple[str, str]]) -> str:
        """``bad`` when a target metric regressed, ``unknown`` when one is inconclusive or
        missing, else ``good``. With no targets, the overall verdict decides."""
        if not targets:
            return {"regressed": "bad", "inconclusive": "unknown"}.get(self.verdict, "good")
        found = {m.key: m.verdict for m in self.metrics if m.key in targets}
        if "regressed" in found.values():
            return "bad"
        if len(found) < len(targets) or "inconclusive" in found.values():
            return "unknown"
        return "good"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "metrics": [m.to_dict() for m in self.metrics],
            "source": self.source,
        }


def _number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GpufitError(f"{where}: expected a number, got {value!r}")
    return float(value)


def judgement_from_ab(data: object, source: str) -> Judgement:
    """Read ``gpufit ab --json`` (schema ``gpufit-ab/1``, AB_CONTRACT: keys may be added)."""
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("gpufit-ab/"):
        raise GpufitError(f"{source}: not a gpufit ab JSON report (no schema gpufit-ab/N)")
    verdict = data.get("verdict")
    if verdict not in VERDICTS:
        raise GpufitError(f"{source}: verdict: expected one of {', '.join(VERDICTS)}")
    metrics = []
    for index, entry in enumerate(data.get("metrics") or []):
        where = f"{source}: metrics[{index}]"
        if not isinstance(entry, dict) or entry.get("verdict") not in VERDICTS:
            raise GpufitError(f"{where}: expected a metric with a verdict")
        metrics.append(
            MetricJudgement(
                test=str(entry.get("test", "")),
                metric=str(entry.get("metric", "")),
                unit=str(entry.get("unit", "")),
                higher_is_better=bool(entry.get("higher_is_better", True)),
                ratio=_number(entry.get("ratio"), f"{where}.ratio"),
                low=_number(entry.get("low"), f"{where}.low"),
                high=_number(entry.get("high"), f"{where}.high"),
                verdict=str(entry["verdict"]),
            )
        )
    return Judgement(str(verdict), tuple(metrics), source)


# -- the search ------------------------------------------------------------------------------

Env = Callable[[frozenset[str]], str]
Judge = Callable[[str, str], Judgement]


@dataclass(frozen=True)
class Step:
    """One A/B the search ran: A against A with ``applied`` changes (by package name)."""

    label: str  # "A vs B", "A + torch", "B - torch", "A + first 4 of 9"
    applied: tuple[str, ...]
    python: str
    judgement: Judgement
    same_as: str = ""  # the label of the step that judged this environment already

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.label,
            "applied": list(self.applied),
            "python": self.python,
            "same_as": self.same_as or None,
            **self.judgement.to_dict(),
        }


@dataclass(frozen=True)
class Culprit:
    unit: Unit
    alone: Step  # A + unit vs A: with it
    without: Step | None  # B - unit vs A: the rest of the upgrade (None: it is the only unit)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unit.to_dict(),
            "with": self.alone.to_dict(),
            "without": None if self.without is None else self.without.to_dict(),
        }


@dataclass(frozen=True)
class Finding:
    """The search's answer. ``outcome``: ``no-regression`` (A vs B did not regress),
    ``culprit`` (named), ``together`` (no single unit regresses alone; the set does),
    ``inconclusive`` (a step could not decide: more rounds may)."""

    outcome: str
    strategy: str
    units: tuple[Unit, ...]
    steps: tuple[Step, ...]
    culprits: tuple[Culprit, ...] = ()
    message: str = ""
    targets: tuple[tuple[str, str], ...] = field(default=())

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome == "no-regression" else 1


def plan_strategy(count: int, few: int = FEW) -> str:
    """One unit at a time when they are few, halving when many.

    >>> plan_strategy(3), plan_strategy(4)
    ('one at a time', 'halving')
    """
    return "one at a time" if count <= few else "halving"


def search(units: Sequence[Unit], env: Env, judge: Judge, few: int = FEW) -> Finding:
    """Find the unit whose change carries the regression of B against A (see the module)."""
    units = tuple(units)
    every = frozenset().union(*(u.names for u in units))
    steps: list[Step] = []
    a_python = env(frozenset())

    def run(label: str, names: frozenset[str]) -> Step:
        # An environment is judged once: B - x of two units is A + the other, and the halving's
        # first prefix may be its suspect alone.
        earlier = next((s for s in steps if frozenset(s.applied) == names), None)
        if earlier is not None:
            step = Step(label, earlier.applied, earlier.python, earlier.judgement, earlier.label)
        else:
            python = env(names)
            step = Step(label, tuple(sorted(names)), python, judge(a_python, python))
        steps.append(step)
        return step

    strategy = plan_strategy(len(units), few)
    ends = run("A vs B", every)
    targets = frozenset(m.key for m in ends.judgement.metrics if m.verdict == "regressed")

    def finding(outcome: str, culprits: Sequence[Culprit] = (), message: str = "") -> Finding:
        return Finding(
            outcome, strategy, units, tuple(steps), tuple(culprits), message, tuple(sorted(targets))
        )

    if ends.judgement.verdict != "regressed":
        if ends.judgement.verdict == "inconclusive":
            return finding(
                "inconclusive",
                message="A vs B is inconclusive: no regression shown, none ruled out; more "
                "--rounds may decide",
            )
        return finding("no-regression", message=f"B is {ends.judgement.verdict} against A")

    def without(unit: Unit) -> Step | None:
        rest = every - unit.names
        return run(f"B - {unit.label}", rest) if rest else None

    if len(units) == 1:
        return finding("culprit", [Culprit(units[0], ends, None)])

    if strategy == "one at a time":
        each = [(u, run(f"A + {u.label}", u.names)) for u in units]
        bad = [(u, s) for u, s in each if s.judgement.state(targets) == "bad"]
        unknown = [u.label for u, s in each if s.judgement.state(targets) == "unknown"]
        if bad:
            culprits = [Culprit(u, s, without(u) if len(bad) == 1 else None) for u, s in bad]
            return finding("culprit", culprits)
        if unknown:
            return finding(
                "inconclusive",
                message=f"undecided alone on A: {', '.join(unknown)}; more --rounds may decide",
            )
        return finding(
            "together",
            message="no change regresses alone on A; together they do (an interaction)",
        )

    # halving: prefixes A + units[:k]; A (k=0) is good, B (k=n) is bad
    good, bad_k = 0, len(units)
    while bad_k - good > 1:
        middle = (good + bad_k) // 2
        names = frozenset().union(*(u.names for u in units[:middle]))
        step = run(f"A + first {middle} of {len(units)} ({units[middle - 1].label} last)", names)
        state = step.judgement.state(targets)
        if state == "unknown":
            left = ", ".join(u.label for u in units[good:bad_k])
            return finding(
                "inconclusive",
                message=f"undecided at {step.label}: the culprit is among {left}; more "
                "--rounds may decide",
            )
        if state == "bad":
            bad_k = middle
        else:
            good = middle
    suspect = units[bad_k - 1]
    alone = run(f"A + {suspect.label}", suspect.names)
    culprit = Culprit(suspect, alone, without(suspect))
    if alone.judgement.state(targets) != "bad":
        earlier = ", ".join(u.label for u in units[: bad_k - 1])
        return finding(
            "together",
            [culprit],
            message=f"{suspect.label} turns the halving order bad, but alone on A it is "
            f"{alone.judgement.verdict}: it regresses together with earlier changes ({earlier})",
        )
    return finding("culprit", [culprit])
