"""The kinds of value a declared field takes: each reads one YAML value into a Python value (or
raises a GpufitError saying what it expected) and carries the JSON Schema of what it accepts,
so a validator and its generated JSON Schema cannot drift apart.

>>> device = matching(r"^(cpu|cuda)$", "cpu or cuda")
>>> device("cpu"), device.schema
('cpu', {'type': 'string', 'pattern': '^(cpu|cuda)$'})
>>> device("cpu\\n")
Traceback (most recent call last):
pytest_gpufit.errors.GpufitError: expected cpu or cuda, got 'cpu\\n'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.numbers import parse_whole

Schema = Mapping[str, Any]
Read = Callable[[Any, str], Any]


@dataclass(frozen=True, eq=False)
class Kind:
    """A kind of value: how to read one, and the JSON Schema of what it accepts.

    ``read(value, name)`` returns the parsed value or raises a GpufitError whose message says
    what was expected; the record that reads a file puts ``file:line: name:`` in front of it.
    ``name`` is the field's dotted name (``targets[0].baseline.tolerance``), for the few parsers
    that name the field in their own messages; most ignore it. ``schema_of`` is the JSON
    Schema, or a function that builds it from a table when the schema is generated (so reading
    a file never pays for it), or None for a nested mapping its owner reads with a record of its
    own (its schema is that record's).
    """

    read: Read
    schema_of: Schema | Callable[[], Schema] | None = None

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON Schema of what ``read`` accepts (a fresh copy)."""
        if self.schema_of is None:
            raise TypeError("a nested kind has no schema of its own: its record gives it")
        schema = self.schema_of() if callable(self.schema_of) else self.schema_of
        return dict(schema)

    def __call__(self, value: Any) -> Any:
        """Read a value outside any file."""
        return self.read(value, "value")

    def described(self, description: str) -> Kind:
        """The same kind, its schema with a ``description``.

        >>> text.described("a name").schema["description"]
        'a name'
        """
        return Kind(self.read, lambda: {**self.schema, "description": description})


def kind(schema: Schema | Callable[[], Schema]) -> Callable[[Callable[[Any], Any]], Kind]:
    """Make a parser of one value into a kind whose values ``schema`` describes::

    @kind({"type": "boolean"})
    def boolean(value): ...
    """

    def make(parse: Callable[[Any], Any]) -> Kind:
        return Kind(lambda value, name: parse(value), schema)

    return make


# A nested mapping (or list) passed through as written: its owner reads it with its own record.
NESTED = Kind(lambda value, name: value)


def matching(pattern: str, expected: str, note: str = "") -> Kind:
    """Text that ``pattern`` matches as a whole, the one pattern the validator and the JSON
    Schema both use (anchored ``^...$``; matched whole, so ``$`` lets no final newline by).

    >>> matching(r"^[a-z]+$", "lower-case letters")("abc")
    'abc'
    """
    compiled = re.compile(pattern)

    def read(value: Any, name: str) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise GpufitError(f"expected {expected}, got {value!r}{note}")
        return value

    return Kind(read, {"type": "string", "pattern": pattern})


def choice(options: tuple[str, ...], expected: str = "") -> Kind:
    """One of ``options``; ``expected`` words them in messages (default: 'one of a, b').

    >>> choice(("every", "one"), "every or one")("all")
    Traceback (most recent call last):
    pytest_gpufit.errors.GpufitError: expected every or one, got 'all'
    """
    wanted = expected or f"one of {', '.join(options)}"

    def read(value: Any, name: str) -> str:
        if value not in options:
            raise GpufitError(f"expected {wanted}, got {value!r}")
        return str(value)

    return Kind(read, {"enum": list(options)})


def whole_numbers(minimum: int, maximum: int, unit: str = "") -> Kind:
    """Whole numbers from ``minimum`` to ``maximum`` (a cap that catches typos such as 10^12);
    5.0 counts as 5, as in JSON Schema's ``integer``.

    >>> whole_numbers(1, 1000, " runs")(5.0)
    5
    """

    def read(value: Any, name: str) -> int:
        return parse_whole(value, minimum=minimum, maximum=maximum, unit=unit, say_range=True)

    return Kind(read, {"type": "integer", "minimum": minimum, "maximum": maximum})


@kind({"type": "string", "minLength": 1})
def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise GpufitError(f"expected text, got {value!r}")
    return value


@kind({"type": "boolean"})
def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise GpufitError(f"expected true or false, got {value!r}")
    return value
