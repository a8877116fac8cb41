"""The package layout's rules, checked statically over src/msjoe (docs/architecture.md draws them).

- No import cycle between the top-level packages and modules of msjoe (``msjoe.train``, ``msjoe.cli``, ...).
- The library (what answers a question: video, features, cache, index, frame_store, samplers, mllm, pipeline, and
  the pure training maths in rl) never imports ``msjoe.train`` or ``msjoe.eval``.

Every import counts: module level, inside functions (lazy) and under ``TYPE_CHECKING``, since each is a
dependency a reader has to follow. The checker is tested on a planted tree first, so a broken checker cannot pass
the real tree by finding nothing.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "msjoe"

LIBRARY = ("video", "features", "cache", "index", "frame_store", "samplers", "mllm", "pipeline", "rl")
"""Units that make up the inference library (and the pure maths): they never import training or evaluation."""
ABOVE_LIBRARY = ("train", "eval")


def top_level_units(root: Path) -> set[str]:
    """Names of the top-level packages and modules under ``root`` (``train``, ``cli``, ...)."""
    units = {path.stem for path in root.glob("*.py") if path.stem != "__init__"}
    units |= {path.name for path in root.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    return units


def import_graph(root: Path) -> dict[str, dict[str, list[str]]]:
    """``graph[a][b]``: where unit ``a`` imports unit ``b`` (``file:line`` strings), for ``a != b``."""
    package = root.name
    units = top_level_units(root)
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        source_unit = parts[0]
        if source_unit == "__init__":
            continue
        module_parts = [package, *parts]
        if module_parts[-1] == "__init__":
            module_parts.pop()
            container = module_parts  # a package's relative imports start at the package itself
        else:
            container = module_parts[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = container[: len(container) - node.level + 1] if node.level else []
                module = ".".join([*base, node.module] if node.module else base) if node.level else node.module or ""
                # ``from msjoe import video``: the names are the units.
                targets = [f"{module}.{alias.name}" for alias in node.names] if module == package else [module]
            for target in targets:
                names = target.split(".")
                if len(names) < 2 or names[0] != package or names[1] not in units or names[1] == source_unit:
                    continue
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                graph[source_unit][names[1]].append(where)
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, or None (depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = 1
        path.append(unit)
        for target in sorted(graph.get(unit, {})):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[unit] = 2
        return None

    for unit in sorted(graph):
        if unit not in state and (cycle := visit(unit)):
            return cycle
    return None


def describe(graph: dict[str, dict[str, list[str]]], cycle: list[str]) -> str:
    return "; ".join(f"{a} -> {b} ({graph[a][b][0]})" for a, b in itertools.pairwise(cycle))


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


# --- the checker, on planted trees ------------------------------------------------------------------------------
def test_the_checker_finds_a_planted_cycle_through_lazy_relative_and_type_checking_imports(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import thing\n",
            "high/__init__.py": "",
            "high/inner.py": "def f():\n    from ..mid import g\n",
            "mid.py": "from pkg import low\n",
        },
    )
    graph = import_graph(root)
    assert {a: sorted(b) for a, b in graph.items()} == {"high": ["mid"], "low": ["high"], "mid": ["low"]}
    assert graph["high"]["mid"] == ["pkg/high/inner.py:2"]
    assert find_cycle(graph) == ["high", "mid", "low", "high"]


def test_the_checker_accepts_a_layered_tree_and_ignores_imports_within_a_unit(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "__init__.py": "from pkg.top import main\n",  # the package's own __init__ is no unit
            "base.py": "import json\n",
            "top/__init__.py": "from pkg.top.sub import x\nfrom . import sub\n",
            "top/sub.py": "import pkg.base\nfrom pkg import __version__\n",  # not a module: no edge
        },
    )
    graph = import_graph(root)
    assert {a: sorted(b) for a, b in graph.items()} == {"top": ["base"]}
    assert find_cycle(graph) is None


# --- the real tree ----------------------------------------------------------------------------------------------
def test_the_tree_is_what_the_checker_reads() -> None:
    units = top_level_units(SOURCE)
    assert set(LIBRARY) | set(ABOVE_LIBRARY) <= units
    graph = import_graph(SOURCE)
    assert "train" in graph["cli"] and "rl" in graph["train"]  # known edges are seen


def test_no_import_cycle_between_top_level_packages_and_modules() -> None:
    graph = import_graph(SOURCE)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: {describe(graph, cycle)}"


@pytest.mark.parametrize("unit", LIBRARY)
def test_the_library_never_imports_training_or_evaluation(unit: str) -> None:
    graph = import_graph(SOURCE)
    reached, frontier = {unit}, [unit]
    while frontier:  # everything the unit depends on, directly or not
        for target in graph.get(frontier.pop(), {}):
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    offending = [_path_to(graph, unit, name) for name in ABOVE_LIBRARY if name in reached]
    assert not offending, f"msjoe.{unit} reaches training or evaluation: {offending}"


def _path_to(graph: dict[str, dict[str, list[str]]], start: str, goal: str) -> str:
    """The first import chain from ``start`` to ``goal``, for the failure message."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        unit = frontier.pop(0)
        for target in sorted(graph.get(unit, {})):
            if target not in previous and target != start:
                previous[target] = unit
                frontier.append(target)
    chain = [goal]
    while chain[-1] != start:
        chain.append(previous[chain[-1]])
    chain.reverse()
    return describe(graph, chain)
