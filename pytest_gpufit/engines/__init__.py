"""Serving engines, one module each behind one protocol and one registry.

- ``protocol``: the ``Engine`` protocol, ``Knob``, ``EngineKnobs``, ``EnginePlan``.
- ``registry``: ``NAMES``, ``engine(name)``, ``check_engine``; nothing else lists engines.
- ``vllm``, ``sglang``, ``llama_cpp``, ``transformers``: one engine each.
- ``planning``: ``plan()`` for any engine, and what the engines' plans share.
- ``knobs``: knobs checked, and the ``gpufit fit`` options made from them.
- ``logs``, ``identify``: a log read and a server recognised, by asking every engine.

Light to import: the engine modules (and the fit estimator they use) load on first use.
"""
