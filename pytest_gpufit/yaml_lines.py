"""YAML loading that remembers the line of every mapping and key, for error messages."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from pytest_gpufit.errors import GpufitError


class Located(dict[str, Any]):
    """A mapping from YAML that knows its own line and each key's line (1-based); one made
    empty (for a key given no value: ``fits:``) knows none.

    >>> Located().key_lines, Located().line
    ({}, 0)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines: dict[str, int] = {}


class _Loader(yaml.SafeLoader):
    pass


MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Located:
    # A key written twice is an error; a key written here overrides the same key merged in
    # with ``<<: *anchor`` (YAML's merge: the mapping's own keys win), and of several merged
    # mappings the first named wins (PyYAML's flatten_mapping puts it last).
    own = sum(1 for key_node, _ in node.value if key_node.tag != MERGE_TAG)
    loader.flatten_mapping(node)
    merged = len(node.value) - own
    mapping = Located()
    mapping.line = node.start_mark.line + 1
    for position, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise GpufitError(f"{key_node.start_mark.line + 1}: keys must be text, got {key!r}")
        if position >= merged and key in mapping and mapping.key_lines[key] > 0:
            raise GpufitError(f"{key_node.start_mark.line + 1}: duplicate key {key!r}")
        mapping[key] = loader.construct_object(value_node, deep=True)
        # A merged key's line is negative until the mapping's own key replaces it.
        line = key_node.start_mark.line + 1
        mapping.key_lines[key] = line if position >= merged else -line
    mapping.key_lines = {key: abs(line) for key, line in mapping.key_lines.items()}
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    # Python refuses to read an integer of more than 4,300 digits (a ValueError, not a YAML
    # error): say where it is, like any bad value, instead of a traceback.
    try:
        value: int = loader.construct_yaml_int(node)
    except ValueError:
        digits = sum(c.isdigit() for c in str(node.value))
        raise GpufitError(
            f"{node.start_mark.line + 1}: a whole number of {digits:,} digits, more than "
            f"Python reads ({sys.get_int_max_str_digits():,}); write a smaller number"
        ) from None
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file; syntax errors name the file, line and column."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise GpufitError(f"{path}: unreadable: {error}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise GpufitError(f"{where}: not valid YAML: {error.problem}") from None
    except yaml.YAMLError as error:
        raise GpufitError(f"{path}: not valid YAML: {error}") from None
    except GpufitError as error:
        raise GpufitError(f"{path}:{error}") from None
