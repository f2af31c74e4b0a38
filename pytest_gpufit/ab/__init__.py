"""A/B of two Python environments on the same card (``gpufit ab``), and the search for the
package change that carries a regression between them (``gpufit bisect``)."""
