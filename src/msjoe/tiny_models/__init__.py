"""Tiny, randomly initialised models for smoke tests and offline demos.

These models produce meaningless output: they exist so that every code path (loading with ``from_pretrained``,
preprocessing, generation, caching) can run on a machine without a model hub. Use real checkpoints for results.
"""
