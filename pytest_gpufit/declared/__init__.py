"""Declared fields: a YAML file's contract written once, read by its validator and its JSON Schema.

``values`` holds the kinds of value a field takes (each parses one YAML value, or says what it
expected, and carries the JSON Schema of what it accepts); ``records`` builds a mapping's
contract from declared fields and reads a YAML mapping with it, every error naming
``file:line: field``. The suite files (``suites/schema.py``) and the runner pool
(``fleet/pool.py``) are both declared this way. A leaf: it imports only ``errors``, ``numbers``
and ``units``, and nothing imports it until a YAML file is read.
"""
