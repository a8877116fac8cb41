"""The install path is locked: every distribution the README's commands install is pinned in constraints.txt.

A package that is pulled in but not pinned lets a new upstream release change what a fresh clone installs (filelock
4.3 broke lmms-eval that way). The test walks msjoe's own requirements (with the `dev` extra) and the lmms-eval test
set recursively, as installed here, and checks each one is pinned at the version that is installed.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def _names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0])
    return names


def _closure(roots: list[tuple[str, set[str]]]) -> dict[str, str]:
    """Installed name → version for the roots and everything they require, markers evaluated on this machine."""
    versions: dict[str, str] = {}
    visited: set[tuple[str, str]] = set()
    stack = [(name, extra) for name, extras in roots for extra in extras | {""}]
    while stack:
        name, extra = stack.pop()
        key = canonicalize_name(name)
        if (key, extra) in visited:
            continue
        visited.add((key, extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement this environment does not satisfy: pip would have installed it, so it is absent
        versions[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                stack.extend((req.name, e) for e in req.extras | {""})
    return versions


def test_every_installed_requirement_is_pinned_at_its_installed_version() -> None:
    pins = _pins(ROOT / "constraints.txt")
    roots = [("msjoe", {"dev"})] + [(name, set()) for name in _names(ROOT / "requirements-lmms-eval.txt")]
    try:
        metadata.distribution("lmms-eval")
    except metadata.PackageNotFoundError:
        pytest.skip("the lmms-eval test set is not installed (README's test command installs it)")
    installed = _closure(roots)
    installed.pop("msjoe")
    unpinned = sorted(name for name in installed if name not in pins)
    assert not unpinned, f"installed but not pinned in constraints.txt (run `bash tools/lock.sh`): {unpinned}"
    drift = {name: (pins[name], version) for name, version in installed.items() if pins[name] != version}
    assert not drift, f"constraints.txt pin != installed version: {drift}"


def test_caps_in_constraints_in_hold_in_the_lock() -> None:
    """constraints.txt was generated under constraints.in: each hand-chosen cap admits the locked version."""
    from packaging.version import Version

    pins = _pins(ROOT / "constraints.txt")
    for line in (ROOT / "constraints.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        locked = pins.get(canonicalize_name(req.name))
        assert locked is not None, f"constraints.in caps {req.name}, which constraints.txt does not pin"
        assert req.specifier.contains(Version(locked), prereleases=True), f"{req} does not admit locked {locked}"


def test_build_backend_is_pinned_to_the_locked_setuptools() -> None:
    import tomllib

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = _pins(ROOT / "constraints.txt")
    for text in requires:
        req = Requirement(text)
        (spec,) = req.specifier
        assert spec.operator == "==", f"build requirement {text} is not exact: a new release would change the build"
        assert pins.get(canonicalize_name(req.name)) == spec.version, f"{text} differs from constraints.txt"


def test_no_version_conflicts_among_installed_packages() -> None:
    """The lmms-eval set skips pip's resolver (--no-deps); the lock must still be consistent. lmms-eval's own av<16 is
    knowingly overridden (docs/lmms_eval.md) and its many optional dependencies are knowingly absent."""
    import subprocess
    import sys

    report = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    conflicts = [
        line
        for line in report.splitlines()
        if "but you have" in line and not line.startswith("lmms-eval 0.7.3 has requirement av<")
    ]
    assert not conflicts, "\n".join(conflicts)
