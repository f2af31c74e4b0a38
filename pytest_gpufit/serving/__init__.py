"""Serving-engine gate: talk to an OpenAI-compatible server over HTTP, launch one, load it.

The package is the ``endpoint`` extra (aiohttp for the streaming client, httpx for the launched
server's readiness polls). Nothing outside it imports either, and
importing this package itself imports nothing heavy: the modules are imported by name.

- ``errors``: ``EndpointError`` (a request or server fault) and ``ServerStartError``.
- ``client``: ``OpenAIClient``, a streaming client measuring TTFT, ITL and E2E per request.
- ``server``: ``LaunchedServer``, a server process with one owner and one way out.
- ``load``: closed-loop and Poisson load levels, percentiles, goodput.
- ``facts``: engine and version from the server, allocation figures from its log and metrics.
- ``prompts``: prompts of a requested token length, checked against ``usage.prompt_tokens``.
"""
