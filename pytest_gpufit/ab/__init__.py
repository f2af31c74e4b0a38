"""A/B of two environments on the same card (``gpufit ab``): interleaved runs, intervals,
verdicts; see docs/ab.md."""
