"""Benchmark registry: each long-video benchmark is one small module with ``load`` and ``score``.

>>> bench = get_benchmark("videomme")
>>> result = bench.load("path/to/videomme/test-00000-of-00001.parquet", "path/to/videos")   # or "lmms-lab/Video-MME"
>>> result.summary()["missing_videos"]        # listed, never an error
>>> report = bench.score(result.items, read_predictions("preds.jsonl"), rules="videomme")   # msjoe.eval
>>> report["headline"], report["breakdowns"]["duration"]

A new benchmark is a module defining ``load(annotations, videos) -> LoadResult`` and ``score(items, predictions,
*, rules=None, seed=None, unrunnable=()) -> dict`` (applying its rule sets of :mod:`msjoe.rules`), registered
with :func:`register_benchmark` in the list at the bottom of this file.
"""

from __future__ import annotations

from msjoe.data.benchmarks.base import BenchmarkSpec, LoadResult, SkippedRow
from msjoe.registry import Registry

_REGISTRY: Registry[BenchmarkSpec] = Registry("benchmark")


def register_benchmark(spec: BenchmarkSpec) -> BenchmarkSpec:
    """Make ``spec`` available as ``get_benchmark(spec.name)``."""
    return _REGISTRY.add(spec.name, spec)


def available_benchmarks() -> list[str]:
    """Names accepted by :func:`get_benchmark`, sorted."""
    return _REGISTRY.names()


def get_benchmark(name: str) -> BenchmarkSpec:
    """The benchmark registered as ``name``."""
    return _REGISTRY.get(name)


__all__ = ["BenchmarkSpec", "LoadResult", "SkippedRow", "available_benchmarks", "get_benchmark", "register_benchmark"]


def _register_builtins() -> None:
    from msjoe.data.benchmarks import longvideobench, lvbench, mlvu, videomme

    for module, description in (
        (videomme, "Video-MME: 900 videos up to 1 h, 2,700 questions; by duration, domain, task type"),
        (longvideobench, "LongVideoBench (val): referring reasoning up to 1 h; by duration group, category"),
        (lvbench, "LVBench: 103 hour-long videos, 1,549 questions; by question type (multi-type)"),
        (mlvu, "MLVU (dev): 7 multiple-choice tasks; M-Avg = mean of per-task accuracies"),
    ):
        register_benchmark(BenchmarkSpec(module.NAME, module.load, module.score, module.HF_DATASET_ID, description))


_register_builtins()
