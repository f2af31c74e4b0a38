"""Declarative YAML suites: a model must load, generate, and reach its targets on the card."""
