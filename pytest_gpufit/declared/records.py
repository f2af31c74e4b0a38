"""A YAML mapping's contract built from declared fields: ``Record.read`` checks a mapping from
``yaml_lines`` against it (unknown keys with a "did you mean", missing ones, each value by its
kind), every error naming ``file:line: field`` and what was expected; ``Record.schema`` is the
JSON Schema of the same mapping.

>>> from pytest_gpufit.declared.values import text, whole_numbers
>>> runner = Record(
...     {"name": Field(text, required=True), "shards": Field(whole_numbers(1, 8), default=1)},
...     Wording(
...         lambda where, key, hint, accepted: (f"{where}.{key}", f"unknown key ({accepted})"),
...         lambda where, key, description: (where, f"missing {key!r}"),
...     ),
... )
>>> runner.read({"name": "h100"}, "pool.yaml", "runners[0]")
{'shards': 1, 'name': 'h100'}
>>> runner.read({"name": "h100", "shards": 9}, "pool.yaml", "runners[0]")
Traceback (most recent call last):
pytest_gpufit.errors.GpufitError: pool.yaml:1: runners[0].shards: expected at most 8, got 9
>>> runner.schema()["required"]
['name']
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpufit.declared.values import Kind
from pytest_gpufit.errors import GpufitError


def line_of(node: Mapping[str, Any], key: str | None = None) -> int:
    """The line of ``key`` in a mapping read by ``yaml_lines`` (else the mapping's, else 1)."""
    lines: Mapping[str, int] = getattr(node, "key_lines", {})
    return (lines.get(key) if key is not None else None) or getattr(node, "line", 0) or 1


def dotted(where: str, key: str) -> str:
    """A field's dotted name: ``dotted("targets[0]", "model")``; a top-level key is its own."""
    return f"{where}.{key}" if where else key


def error_at(path: Path | str, line: int, name: str, message: str) -> GpufitError:
    """The one shape of an error in a declared file: ``file:line: field: message``."""
    return GpufitError(f"{path}:{line}: {name}: {message}")


def closest(key: object, options: Collection[str]) -> str | None:
    """The option a mistyped ``key`` most likely meant, if any (for "did you mean").

    >>> closest("thruput", ["loads", "throughput"]), closest("zzz", ["loads"])
    ('throughput', None)
    """
    hint = difflib.get_close_matches(str(key), list(options), n=1)
    return hint[0] if hint else None


@dataclass(frozen=True)
class Wording:
    """How a file format words an unknown key and a missing one. Each returns the name the error
    gives (a field, or the mapping) and the message.

    ``unknown(where, key, closest, accepted)``: ``where`` is the mapping's dotted name ("" at
    the top), ``closest`` the "did you mean" (or None), ``accepted`` the keys, comma-separated.
    ``missing(where, key, description)``: ``description`` is the field's (may be "").
    """

    unknown: Callable[[str, str, str | None, str], tuple[str, str]]
    missing: Callable[[str, str, str], tuple[str, str]]


def check_keys(
    node: Mapping[str, Any],
    accepted: Collection[str],
    path: Path | str,
    where: str,
    wording: Wording,
) -> None:
    """Refuse the first key of ``node`` that is not ``accepted``, at its line."""
    for key in node:
        if key not in accepted:
            name, message = wording.unknown(
                where, str(key), closest(key, accepted), ", ".join(accepted)
            )
            raise error_at(path, line_of(node, key), name, message)


def object_schema(
    properties: Mapping[str, Any], *, nullable: bool = False, required: Collection[str] = ()
) -> dict[str, Any]:
    """A JSON Schema object of these properties and no others."""
    schema: dict[str, Any] = {
        "type": ["object", "null"] if nullable else "object",
        "additionalProperties": False,
        "properties": dict(properties),
    }
    if required:
        schema["required"] = list(required)
    return schema


@dataclass(frozen=True)
class Field:
    """One key of a mapping: its kind, whether it must be given, its default, its meaning."""

    kind: Kind
    required: bool = False
    default: Any = None  # None: no default (the value is absent when the key is)
    description: str = ""  # the JSON Schema's description; a missing key's explanation
    schema_default: bool = False  # show ``default`` in the JSON Schema

    def schema(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The field's JSON Schema: its kind's (or ``given``, for a nested mapping), with its
        default and description."""
        schema = dict(given) if given is not None else self.kind.schema
        if self.schema_default:
            schema["default"] = self.default
        if self.description:
            schema["description"] = self.description
        return schema


@dataclass(frozen=True)
class Record:
    """The contract of one YAML mapping: its fields, in the order the JSON Schema lists them."""

    fields: Mapping[str, Field]
    wording: Wording

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(key for key, field in self.fields.items() if field.required)

    def read(self, node: Mapping[str, Any], path: Path | str, where: str = "") -> dict[str, Any]:
        """Check ``node`` and return its values by key: the defaults of the fields it leaves out
        (in field order), then what it gives, each read by its field's kind (a nested field's
        value as written, for its owner to read). The first problem, in the order unknown key,
        missing key, bad value (each in field order), is a GpufitError naming file, line and
        field."""
        check_keys(node, self.fields, path, where, self.wording)
        for key in self.required:
            if key not in node:
                name, message = self.wording.missing(where, key, self.fields[key].description)
                raise error_at(path, line_of(node), name, message)
        values = {key: f.default for key, f in self.fields.items() if f.default is not None}
        for key, field in self.fields.items():
            if key in node:
                name = dotted(where, key)
                try:
                    values[key] = field.kind.read(node[key], name)
                except GpufitError as error:
                    raise error_at(path, line_of(node, key), name, str(error)) from None
        return values

    def schema(
        self, nested: Mapping[str, Mapping[str, Any]] | None = None, *, nullable: bool = False
    ) -> dict[str, Any]:
        """The JSON Schema of the mapping; ``nested`` gives the schemas of its nested fields
        (each read by a record or code of its own), and a nested field left out is an error."""
        given = nested or {}
        properties = {
            key: field.schema(given[key] if field.kind.schema_of is None else None)
            for key, field in self.fields.items()
        }
        return object_schema(properties, nullable=nullable, required=self.required)
