"""A/B of two environments on the same card (``gpufit ab``): interleaved runs, intervals,
verdicts; see docs/ab.md. And the search for the package change that carries a regression
between two environments (``gpufit bisect``, ``bisect*.py``)."""
