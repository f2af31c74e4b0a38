"""The one error type the plugin raises for bad input; its message is shown to users as is."""

from __future__ import annotations


class GpufitError(Exception):
    """A problem with the user's input or machine, described in one readable message."""
