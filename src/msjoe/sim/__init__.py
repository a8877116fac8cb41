"""Sampler simulators: synthetic similarity matrices with known evidence and a simulated answerer, for training and
comparing samplers on a CPU in minutes.

- :mod:`msjoe.sim.planted`: the generator (planted evidence spans, look-alikes, shots, queries of mixed quality);
- :mod:`msjoe.sim.variants`: the built-in family of named variants, split into validation and held-out roles;
- :mod:`msjoe.sim.protocol`: the public protocol for your own simulator (``items(n, seed)``);
- :mod:`msjoe.sim.train` / :mod:`msjoe.sim.evaluate`: stage-1 training on a simulator, paired comparisons;
- ``msjoe sim list|train|eval`` (:mod:`msjoe.sim.cli`).
"""
