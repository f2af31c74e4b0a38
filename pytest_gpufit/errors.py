"""The one error type the plugin raises for bad input; its message is shown to users as is."""

from __future__ import annotations


class GpufitError(Exception):
    """A problem with the user's input or machine, described in one readable message."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a long command, saying where it stopped and what it did not write
    (``interrupted in round 2 of at most 20; no verdict, nothing written``): the command line
    prints it as one line and exits 130, as a shell reports a job ended by SIGINT."""
