"""Serving-engine gate: talk to an OpenAI-compatible server over HTTP, launch one, load it.

The package is the ``endpoint`` extra (aiohttp for the streaming client; the launched server's
readiness polls use the standard library). Nothing outside it imports aiohttp, and importing
this package itself imports nothing heavy: the modules are imported by name.

- ``errors``: ``EndpointError`` (a request or server fault), ``ServerStartError``,
  ``LaunchWarning``.
- ``client``: ``OpenAIClient``, a streaming client measuring TTFT, ITL and E2E per request and
  holding what the server says (usage, finish_reason, model, logprobs, pacing) against what
  arrived.
- ``server``: ``LaunchedServer``, a server process with one owner and one way out, proved to
  be the one listening on its port.
- ``sockets``: who listens on a port, from /proc (Linux).
- ``load``: closed-loop and Poisson load levels, percentiles, goodput, a prompt per request.
- ``facts``: engine and version from the server, allocation figures from its log and metrics.
- ``prompts``: prompts of a requested token length, checked against ``usage.prompt_tokens``.
"""
