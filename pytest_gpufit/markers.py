"""The one table of gpufit markers: decorators, registration, YAML ``requires:`` keys and schema.

Each ``MarkerSpec`` says once what a marker takes (parameters, defaults, the parser of each
value), what it means (help text), which ``Requirement`` field it fills, and which YAML
``requires:`` keys of a suite serve it. Everything else is generated from ``SPECS``:

- the decorators exported by ``pytest_gpufit`` (``make_decorator``),
- the markers registered for ``pytest --markers`` and ``--strict-markers`` (``marker_lines``),
- the suite ``requires:`` keys the validator accepts (``YAML_KEYS``, ``requirement_from_yaml``),
- the ``requires`` part of ``schema.json`` (``requires_json_schema``).

Pure functions only; nothing here imports torch or touches a device.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from pytest_gpufit.engines.registry import NAMES as ENGINE_NAMES
from pytest_gpufit.engines.registry import check_engine, engine
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.request import FitRequest
from pytest_gpufit.hardware.dtypes import (
    CC_JSON_SCHEMA,
    DTYPES,
    canonical_dtype,
    parse_compute_capability,
)
from pytest_gpufit.hardware.records import LINK_LEVELS, SMI_LEVELS, link_level
from pytest_gpufit.numbers import parse_whole
from pytest_gpufit.requirements import Requirement
from pytest_gpufit.units import parse_size, shown, size_json_schema

REQUIRED: Any = inspect.Parameter.empty
"""The default of a parameter that has none."""

Parse = Callable[[Any, str], Any]


@dataclass(frozen=True)
class Param:
    """One marker parameter: its parser turns a user value into the ``Requirement`` field's."""

    name: str
    parse: Parse
    annotation: str
    default: Any = REQUIRED
    schema: Mapping[str, Any] = field(default_factory=dict)  # JSON Schema of a YAML value
    variadic: bool = False  # ``*dtypes``


@dataclass(frozen=True)
class YamlKey:
    """A suite ``requires:`` key: its value binds ``param``, plus fixed keyword arguments."""

    key: str
    param: str
    fixed: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MarkerSpec:
    """One gpufit marker: name, parameters, help, the ``Requirement`` it fills, its YAML keys."""

    name: str
    params: tuple[Param, ...]
    help: str
    # Requirement field each parameter fills; a marker with a ``build`` combines them itself.
    fields: Mapping[str, str] = field(default_factory=dict)
    build: Callable[[Mapping[str, Any]], Requirement] | None = None
    yaml: tuple[YamlKey, ...] = ()

    @property
    def signature(self) -> inspect.Signature:
        kinds = inspect.Parameter
        return inspect.Signature(
            [
                kinds(
                    p.name,
                    kinds.VAR_POSITIONAL if p.variadic else kinds.POSITIONAL_OR_KEYWORD,
                    default=kinds.empty if p.variadic else p.default,
                    annotation=p.annotation,
                )
                for p in self.params
            ],
            return_annotation="pytest.MarkDecorator",
        )

    @property
    def usage(self) -> str:
        """``requires_vram(size, free=False)``, as ``pytest --markers`` shows it."""
        parts = []
        for p in self.params:
            if p.variadic:
                parts.append(f"*{p.name}")
            elif p.default is REQUIRED:
                parts.append(p.name)
            else:
                parts.append(f"{p.name}={p.default!r}")
        return f"{self.name}({', '.join(parts)})"

    def what(self, param: Param) -> str:
        """How a message names a value: the marker for its main argument, else marker + name."""
        main = param is self.params[0] and (param.default is REQUIRED or param.variadic)
        return self.name if main else f"{self.name} {param.name}"


# ---- value parsers (each takes the value and how to name it) -------------------------------

_ASCII_DIGIT = re.compile(r"[0-9]")


def positive_int(value: Any, what: str) -> int:
    return parse_whole(value, what)


def _at_most(maximum: int) -> Parse:
    """A whole number from 1 to ``maximum``: the cap turns a typo (10**12) into a message."""

    def parse(value: Any, what: str) -> int | None:
        if value is None and maximum == MAX_CONTEXT:
            return None  # requires_fit(context=None): the model's own context
        return parse_whole(value, what, maximum=maximum)

    return parse


MAX_CONTEXT = 100_000_000  # tokens
MAX_BATCH = 100_000
MAX_INSTANCES = 1024
MAX_FIT_GPUS = 64  # tensor parallel beyond one node's cards is not this marker's business
ARGUMENTS = "*"  # a YamlKey whose value is a mapping of the marker's arguments


def _flag(value: Any, what: str) -> bool:
    # A string such as "False" is truthy: refuse it rather than read it as True.
    if not isinstance(value, bool):
        raise GpufitError(f"{what}: expected True or False, got {value!r}")
    return value


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, str):
        raise GpufitError(f"{what}: expected text such as 'H100', got {value!r}")
    return (value,) if value else ()


def _size(value: Any, what: str) -> int:
    return parse_size(value, what)


def _capability(value: Any, what: str) -> tuple[int, int]:
    try:
        return parse_compute_capability(value)
    except GpufitError as error:
        raise GpufitError(f"{what}: {error}") from None


def _dtype(value: Any, what: str) -> str:
    try:
        return canonical_dtype(value)
    except GpufitError as error:
        raise GpufitError(f"{what}: {error}") from None


def version_spec(value: Any, what: str) -> str:
    """``'550'`` means ``'>=550'``; the result is a valid ``SpecifierSet`` string.

    >>> version_spec("12.4", "requires_cuda")
    '>=12.4'
    """
    text = str(value).strip() if isinstance(value, (str, int, float)) else ""
    if isinstance(value, bool):
        text = ""
    if text and _ASCII_DIGIT.match(text):
        text = ">=" + text
    try:
        SpecifierSet(text)
        if not text or not text.isascii():
            raise InvalidSpecifier(text)
    except InvalidSpecifier:
        raise GpufitError(
            f"{what}: expected a version such as '>=550', '550.54' or '>=12.4,<13', got {value!r}"
        ) from None
    return text  # as the user wrote it, so messages quote it


def _model(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise GpufitError(f"{what}: expected a path or a known model id, got {value!r}")
    return value


def _precision(value: Any, what: str) -> str:
    from pytest_gpufit.fit.estimate import check_precision  # late: the fit engine, on use

    if not isinstance(value, str):
        raise GpufitError(f"{what}: expected a precision such as 'bf16', got {value!r}")
    try:
        check_precision(value)
    except GpufitError as error:
        raise GpufitError(f"{what}: {error}") from None
    return value


def _engine(value: Any, what: str) -> str | None:
    if value is None:
        return None
    return check_engine(value, what)


def _fit(bound: Mapping[str, Any]) -> Requirement:
    """One copy over ``gpus`` devices: the test needs that many devices, each holding its part."""
    if bound["engine"] is not None and bound["instances"] > 1:
        raise GpufitError(
            "requires_fit: instances > 1 with engine= is not modelled (each engine process "
            "takes its own share of the card, e.g. vLLM's --gpu-memory-utilization); judge one "
            "instance, or leave engine out to count raw bytes"
        )
    return Requirement(count=bound["gpus"], fits=(FitRequest(**bound),))


MAX_P2P_GPUS = 64  # the pairs of more cards than one host holds are not probed


def _p2p_count(value: Any, what: str) -> int:
    """``true`` (the YAML ``p2p: true``) is 2 GPUs; else a whole number from 2."""
    if value is True:
        return 2
    if value is False:
        raise GpufitError(
            f"{what}: false asks for nothing; leave the key out when the test needs no P2P"
        )
    number = positive_int(value, what)
    if not 2 <= number <= MAX_P2P_GPUS:
        raise GpufitError(f"{what}: P2P joins 2 to {MAX_P2P_GPUS} GPUs, got {shown(value)}")
    return number


def _topology(value: Any, what: str) -> str | None:
    """A topology bound: a level of ``LINK_LEVELS`` or nvidia-smi's name for it.

    >>> _topology("PIX", "topology"), _topology("host-bridge", "topology")
    ('single-switch', 'host-bridge')
    """
    if value is None:
        return None
    text = link_level(value) if isinstance(value, str) else ""
    if text not in LINK_LEVELS:
        smi = ", ".join(name.upper() for name in SMI_LEVELS)
        raise GpufitError(
            f"{what}: expected one of {', '.join(LINK_LEVELS)} (nearest first; or nvidia-smi's "
            f"{smi}), got {shown(value)}"
        )
    return text


def _p2p(bound: Mapping[str, Any]) -> Requirement:
    return Requirement(count=bound["count"], p2p=True, topology=bound["topology"])


_VERSION_SCHEMA = {"type": ["string", "number"]}
_DTYPE_SCHEMA = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ],
    "description": "one dtype or a list: " + ", ".join(DTYPES),
}


def _version_marker(name: str, what: str, example: str) -> MarkerSpec:
    key = name.removeprefix("requires_")
    return MarkerSpec(
        name,
        (Param("version", version_spec, "str", schema=_VERSION_SCHEMA),),
        f"{what}, e.g. '{example}' (a bare version means at least that)",
        fields={"version": key},
        yaml=(YamlKey(key, "version"),),
    )


SPECS: tuple[MarkerSpec, ...] = (
    MarkerSpec(
        "requires_gpu",
        (
            Param(
                "count",
                positive_int,
                "int",
                1,
                {"type": "integer", "minimum": 1},
            ),
            Param("name", _names, "str | None", None, {"type": ["string", "null"]}),
        ),
        "at least `count` GPUs, each named like `name` (a case-insensitive substring)",
        fields={"count": "count", "name": "names"},
        yaml=(YamlKey("count", "count"), YamlKey("name", "name")),
    ),
    MarkerSpec(
        "requires_vram",
        (
            Param("size", _size, "int | float | str", schema=size_json_schema()),
            Param("free", _flag, "bool", False, {"type": "boolean"}),
        ),
        "GPU memory per device: a bare number is GB (10^9 bytes); or '80GB', '79GiB', "
        "'61440MiB'; free=True judges the memory free now",
        fields={"size": "vram_bytes", "free": "vram_free"},
        yaml=(YamlKey("vram", "size"), YamlKey("free_vram", "size", {"free": True})),
    ),
    MarkerSpec(
        "requires_compute_capability",
        (
            Param(
                "capability",
                _capability,
                "str | float",
                schema=CC_JSON_SCHEMA,
            ),
        ),
        "a minimum compute capability, e.g. '8.9'",
        fields={"capability": "compute_capability"},
        yaml=(YamlKey("compute_capability", "capability"),),
    ),
    MarkerSpec(
        "requires_dtype",
        (Param("dtypes", _dtype, "str", schema=_DTYPE_SCHEMA, variadic=True),),
        "native tensor-core support for every dtype named (" + ", ".join(DTYPES) + ")",
        fields={"dtypes": "dtypes"},
        yaml=(YamlKey("dtype", "dtypes"),),
    ),
    _version_marker("requires_driver", "NVIDIA driver version", ">=550"),
    _version_marker(
        "requires_cuda", "CUDA version the driver supports (and torch's CUDA runtime)", ">=12.4"
    ),
    _version_marker("requires_torch", "installed torch version", ">=2.4"),
    MarkerSpec(
        "requires_fit",
        (
            Param("model", _model, "str", schema={"type": "string", "minLength": 1}),
            Param("dtype", _precision, "str", "bf16", {"type": "string"}),
            Param(
                "context",
                _at_most(MAX_CONTEXT),
                "int | None",
                None,
                {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_CONTEXT},
            ),
            Param(
                "batch",
                _at_most(MAX_BATCH),
                "int",
                1,
                {"type": "integer", "minimum": 1, "maximum": MAX_BATCH},
            ),
            Param(
                "instances",
                _at_most(MAX_INSTANCES),
                "int",
                1,
                {"type": "integer", "minimum": 1, "maximum": MAX_INSTANCES},
            ),
            Param(
                "gpus",
                _at_most(MAX_FIT_GPUS),
                "int",
                1,
                {"type": "integer", "minimum": 1, "maximum": MAX_FIT_GPUS},
            ),
            Param(
                "engine",
                _engine,
                "str | None",
                None,
                {"enum": [*ENGINE_NAMES, None]},
            ),
        ),
        "the model (a folder, a config.json, or a shipped id) fits at this precision, context "
        "and batch, `instances` times: on one GPU, or split over `gpus` GPUs (tensor "
        f"parallel); with `engine` ({', '.join(ENGINE_NAMES)}) it must start there",
        build=_fit,
        yaml=(YamlKey("fit", ARGUMENTS),),
    ),
    MarkerSpec(
        "requires_p2p",
        (
            Param(
                "count",
                _p2p_count,
                "int",
                2,
                {
                    "oneOf": [
                        {"const": True},
                        {"type": "integer", "minimum": 2, "maximum": MAX_P2P_GPUS},
                    ]
                },
            ),
            Param(
                "topology",
                _topology,
                "str | None",
                None,
                {"type": ["string", "null"]},
            ),
        ),
        "peer-to-peer reads and writes between every pair of `count` GPUs (YAML `p2p: true` "
        "is 2); `topology` bounds how far apart they sit, nearest first: "
        + ", ".join(LINK_LEVELS)
        + " (or nvidia-smi's NV#, PIX, PXB, PHB, NODE, SYS)",
        build=_p2p,
        yaml=(YamlKey("p2p", "count"), YamlKey("topology", "topology")),
    ),
)


def yaml_keys(specs: Sequence[MarkerSpec]) -> dict[str, tuple[MarkerSpec, YamlKey]]:
    """Suite ``requires:`` key -> the marker and parameter that serve it."""
    return {key.key: (spec, key) for spec in specs for key in spec.yaml}


BY_NAME: dict[str, MarkerSpec] = {spec.name: spec for spec in SPECS}
YAML_KEYS = yaml_keys(SPECS)


# ---- binding and building --------------------------------------------------------------------


def _bind(spec: MarkerSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    names = [p.name for p in spec.params]
    variadic = spec.params[-1].variadic
    if variadic:
        if kwargs or not args:
            raise GpufitError(f"{spec.name}: name one or more values, e.g. {spec.usage}")
        return {names[-1]: tuple(args)}
    if len(args) > len(names):
        raise GpufitError(f"{spec.name}: takes at most {len(names)} arguments ({', '.join(names)})")
    bound = {p.name: p.default for p in spec.params if p.default is not REQUIRED}
    bound.update(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            raise GpufitError(
                f"{spec.name}: unknown argument {key!r}; accepted: {', '.join(names)}"
            )
        bound[key] = value
    missing = [n for n in names if n not in bound]
    if missing:
        raise GpufitError(f"{spec.name}: missing argument {missing[0]!r}; usage: {spec.usage}")
    return bound


def spec_requirement(
    spec: MarkerSpec, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> Requirement:
    """One call of the marker ``spec`` as a ``Requirement``; bad arguments raise."""
    bound = _bind(spec, args, kwargs or {})
    values: dict[str, Any] = {}
    for param in spec.params:
        value = bound[param.name]
        what = spec.what(param)
        if param.variadic:
            values[param.name] = tuple(param.parse(v, what) for v in value)
        else:
            values[param.name] = param.parse(value, what)
    if spec.build is not None:
        return spec.build(values)
    return Requirement(**{spec.fields[k]: v for k, v in values.items()})


def requirement_from_marker(
    name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> Requirement:
    """Turn one marker (or decorator) call into a ``Requirement``; bad arguments raise.

    >>> requirement_from_marker("requires_vram", (80,)).vram_bytes
    80000000000
    """
    spec = BY_NAME.get(name)
    if spec is None:
        raise GpufitError(f"unknown gpufit marker {name!r}; known: {', '.join(BY_NAME)}")
    return spec_requirement(spec, args, kwargs)


def requirement_from_yaml(key: str, value: Any) -> Requirement:
    """One suite ``requires:`` entry, through the marker that serves it.

    >>> requirement_from_yaml("free_vram", "40GB").vram_free
    True
    """
    spec, yaml_key = YAML_KEYS[key]
    if yaml_key.param == ARGUMENTS:
        if not isinstance(value, Mapping):
            names = ", ".join(p.name for p in spec.params)
            raise GpufitError(
                f"expected a mapping of {spec.name} arguments ({names}), got {value!r}"
            )
        return spec_requirement(spec, (), {str(k): v for k, v in value.items()})
    param = next(p for p in spec.params if p.name == yaml_key.param)
    if param.variadic:
        args = tuple(value) if isinstance(value, list) else (value,)
        return spec_requirement(spec, args, dict(yaml_key.fixed))
    return spec_requirement(spec, (), {yaml_key.param: value, **yaml_key.fixed})


def check_fit_models(req: Requirement, base: Path) -> None:
    """Collection-time check that every ``requires_fit`` model exists (a path or a shipped id).

    Raises the fit engine's message, prefixed with the marker.
    """
    if not req.fits:
        return
    # late: only tests with requires_fit pay (the fit engine, ~20 ms)
    from pytest_gpufit.fit.context import check_context
    from pytest_gpufit.fit.estimate import check_tensor_parallel
    from pytest_gpufit.fit.spec import load_spec, resolve_model

    for fit in req.fits:
        try:
            resolve_model(fit.model, base)
            if fit.context is not None or fit.gpus > 1:
                spec = load_spec(fit.model, base)
                # Beyond the model's maximum, or a split the engines refuse: errors, not verdicts.
                check_context(spec, fit.context, "context")
                if fit.engine is None:
                    check_tensor_parallel(spec, fit.gpus, "gpus")
                else:  # each engine its own way (llama.cpp splits whole layers, not heads)
                    engine(fit.engine).check_split(spec, fit.gpus, "gpus")
        except GpufitError as error:
            raise GpufitError(f"requires_fit: {error}") from None


# ---- surfaces generated from the table -----------------------------------------------------


def marker_lines(specs: Sequence[MarkerSpec] = SPECS) -> list[str]:
    """The ``markers`` ini lines that register every gpufit marker, with its help."""
    return [f"{spec.usage}: {spec.help} (pytest-gpufit)" for spec in specs]


def requires_json_schema(specs: Sequence[MarkerSpec] = SPECS) -> dict[str, Any]:
    """The JSON Schema of a suite's ``requires:`` mapping."""
    properties: dict[str, Any] = {}
    for key, (spec, yaml_key) in yaml_keys(specs).items():
        if yaml_key.param == ARGUMENTS:
            first = spec.params[0].name
            properties[key] = {
                "type": "object",
                "additionalProperties": False,
                "required": [first],
                "properties": {p.name: dict(p.schema) for p in spec.params},
                "description": f"{spec.name}(...) arguments: {spec.help}",
            }
            continue
        param = next(p for p in spec.params if p.name == yaml_key.param)
        extra = f" with {yaml_key.fixed}" if yaml_key.fixed else ""
        properties[key] = {
            **param.schema,
            "description": f"{spec.name}({param.name}=...){extra}: {spec.help}",
        }
    return {"type": "object", "additionalProperties": False, "properties": properties}


def make_decorator(spec: MarkerSpec) -> Callable[..., pytest.MarkDecorator]:
    """The decorator for one marker: validates its arguments where the user's module calls it."""
    name = spec.name

    def decorator(*args: Any, **kwargs: Any) -> pytest.MarkDecorator:
        __tracebackhide__ = True
        try:
            spec_requirement(spec, args, kwargs)
        except GpufitError as error:
            raise GpufitError(str(error)) from None  # raised here, so no plugin frame shows
        mark: pytest.MarkDecorator = getattr(pytest.mark, name)(*args, **kwargs)
        return mark

    decorator.__name__ = decorator.__qualname__ = name
    decorator.__doc__ = f"{spec.help[0].upper()}{spec.help[1:]}.\n\nUsage: ``{spec.usage}``."
    decorator.__signature__ = spec.signature  # type: ignore[attr-defined]
    decorator.__module__ = "pytest_gpufit"
    return decorator


# ---- typos ---------------------------------------------------------------------------------

# Marks that pytest and common plugins own: never flagged, however close they look.
_NOT_TYPOS = frozenset(
    {
        *("skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings"),
        *("tryfirst", "trylast", "gpu", "gpus", "slow", "timeout", "flaky", "asyncio"),
        *("anyio", "django_db", "benchmark", "order", "dependency", "forked", "xdist_group"),
        *("requires", "requirements", "required"),
    }
)


@functools.lru_cache(maxsize=1024)  # one difflib run per mark name, not per test
def near_miss(mark_name: str) -> str | None:
    """The gpufit marker a mark name was probably meant to be, or None.

    >>> near_miss("require_vram"), near_miss("requires_gpus"), near_miss("requries_fit")
    ('requires_vram', 'requires_gpu', 'requires_fit')
    >>> near_miss("skip"), near_miss("gpu"), near_miss("requires_vram")
    (None, None, None)
    """
    if mark_name in BY_NAME or mark_name in _NOT_TYPOS:
        return None
    import difflib  # late: only sessions with unregistered marks pay

    lowered = mark_name.lower()
    if lowered in BY_NAME:
        return lowered  # Requires_VRAM
    match = difflib.get_close_matches(lowered, BY_NAME, n=1, cutoff=0.85)
    if match:
        return match[0]
    # req_vram, require-fit: a shortened or misspelled prefix before a known suffix.
    prefix, _, rest = lowered.replace("-", "_").partition("_")
    suffixes = {spec.name.removeprefix("requires_"): spec.name for spec in SPECS}
    if prefix.startswith("req") or difflib.SequenceMatcher(None, prefix, "requires").ratio() > 0.7:
        close = difflib.get_close_matches(rest, suffixes, n=1, cutoff=0.85)
        if close:
            return suffixes[close[0]]
    return None


def registered_names(marker_lines: Sequence[str]) -> frozenset[str]:
    """Mark names registered in the ``markers`` ini value (``name(args): help`` lines).

    >>> sorted(registered_names(["slow: slow tests", "requires_cpu(n): mine"]))
    ['requires_cpu', 'slow']
    """
    return frozenset(line.split(":")[0].split("(")[0].strip() for line in marker_lines)


def typo_error(mark_name: str, registered: frozenset[str]) -> GpufitError | None:
    """A usage error for a mark that looks like a misspelled gpufit marker.

    pytest only warns about an unknown mark (unless ``--strict-markers``), and the test then
    runs ungated: that must not turn a gate green. A mark the project registered is its own.
    """
    if mark_name in registered:
        return None
    hint = near_miss(mark_name)
    if hint is None:
        return None
    return GpufitError(
        f"{mark_name}: not a gpufit marker; did you mean {hint}? (as written the test would run "
        "ungated; if the mark is your own, register it under `markers` in the pytest "
        "configuration)"
    )


# ---- the marks of a pytest item --------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _parse_cached(
    name: str, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...]
) -> Requirement:
    return requirement_from_marker(name, args, dict(kwargs))


def _parse_mark(mark: pytest.Mark) -> Requirement:
    """Suites of thousands of tests repeat a handful of markers: parse each once."""
    try:
        return _parse_cached(mark.name, mark.args, tuple(sorted(mark.kwargs.items())))
    except TypeError:  # an unhashable argument: parse without the cache
        return requirement_from_marker(mark.name, mark.args, mark.kwargs)


def item_requirement(
    item: pytest.Item, registered: frozenset[str] | None = None
) -> Requirement | None:
    """All gpufit marks of an item (and its own ``gpufit_requirement``), merged; None when it
    has none.

    A mark that looks like a misspelled gpufit marker and is not registered is an error, and
    ``requires_fit`` models must exist: both are caught here, at collection.
    """
    if registered is None:
        registered = registered_names(item.config.getini("markers"))
    merged: Requirement | None = getattr(item, "gpufit_requirement", None)
    # One walk over the item's marks (closest first), not one per marker name.
    for mark in item.iter_markers():
        try:
            if mark.name not in BY_NAME:
                typo = typo_error(mark.name, registered)
                if typo is not None:
                    raise typo
                continue
            req = _parse_mark(mark)
            if req.fits:
                check_fit_models(req, Path(str(item.path)).parent)
        except GpufitError as error:
            raise GpufitError(f"{item.nodeid}: @{error}") from None
        merged = req if merged is None else merged.merge(req)
    return merged
