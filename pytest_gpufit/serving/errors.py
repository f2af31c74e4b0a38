"""The errors a serving endpoint raises: one type per failure family, each one readable message."""

from __future__ import annotations

from pytest_gpufit.errors import GpufitError


class EndpointError(GpufitError):
    """A request to a serving endpoint failed; the message says what the server did.

    ``kind`` names the family so a load level can count errors by cause: ``connect``,
    ``status``, ``auth``, ``model`` (an unknown model, or an answer from another one),
    ``stream-error``, ``malformed`` (including a claim that disagrees with what arrived),
    ``buffered`` (a stream delivered in a burst where its pacing is judged), ``dropped``,
    ``timeout``, ``short``, ``config``.
    """

    def __init__(self, message: str, kind: str = "status", status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class ServerStartError(GpufitError):
    """A launched server did not come up; the message names its log file and quotes its end."""


class LaunchWarning(UserWarning):
    """A launch that works but costs: two xdist workers starting a server for one target."""
