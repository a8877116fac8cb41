"""Benchmark: wall time of ``msjoe --help`` (and one subcommand's help), and what its imports cost.

Each run is a fresh process (what a user pays when typing the command); the figure is the median of ``--repeat``
runs after one warm-up run (which fills the OS file cache). The import table is ``python -X importtime -c
"import msjoe.cli"``: the slowest top-level imports under ``msjoe.cli``, cumulative microseconds.

    python bench/bench_cli_help.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(command: list[str], repeat: int) -> float:
    subprocess.run(command, capture_output=True, check=True)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def slowest_imports(count: int = 8) -> list[tuple[int, str]]:
    """(cumulative µs, module) of the slowest imports directly under ``msjoe.cli`` (one nesting level down)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import msjoe.cli"], capture_output=True, text=True, check=True
    )
    rows = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        if depth <= 1:
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    script = str(Path(sys.executable).with_name("msjoe"))
    python = sys.executable
    bare = median_seconds([python, "-c", "pass"], args.repeat)
    print(f"python -c pass        {bare * 1000:7.0f} ms")
    for argv in (["--help"], ["index", "--help"]):
        seconds = median_seconds([script, *argv], args.repeat)
        print(f"msjoe {' '.join(argv):15} {seconds * 1000:7.0f} ms  (median of {args.repeat})")
    heavy = subprocess.run(
        [
            python,
            "-c",
            "import sys, msjoe.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"heavy modules after `import msjoe.cli`: {heavy}")
    print("slowest imports under msjoe.cli (cumulative ms):")
    for micros, name in slowest_imports():
        print(f"  {micros / 1000:7.1f}  {name}")


if __name__ == "__main__":
    main()
