"""Plan the GPU gate across a pool of runner classes (``gpufit-runners.yaml``).

``pool`` reads the pool file, ``plan`` assigns gated items to classes by simulation, ``collect``
runs pytest's collection for ``gpufit plan``, ``select`` keeps a gate job to its class's items.
"""
