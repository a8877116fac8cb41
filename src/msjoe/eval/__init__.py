"""Evaluation: the benchmark harness, reports and plots, rescoring prediction files, and reading them
(:mod:`msjoe.eval.predictions`). The scoring rule sets live in :mod:`msjoe.rules`."""

from msjoe.eval.predictions import read_predictions

__all__ = ["read_predictions"]
