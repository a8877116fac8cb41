"""Which files the service may open: videos under the allowed roots, addressed by root name and relative path.

A client never sends a server path. It names a root (``GET /api/roots`` lists them by the folder's name) and a
path relative to it; :meth:`VideoRoots.resolve` refuses, before touching the file system beyond the root:

- absolute paths (``/etc/passwd``, ``C:\\x``) and backslashes (a Windows separator, never needed here);
- any ``..`` component, even one that would stay inside the root;
- symbolic links anywhere along the path (checked component by component with ``lstat``, so a link inside a
  root cannot lead out of it), and, as a second line, a resolved path outside the root;
- files without a video suffix, and anything that is not a regular file.

The remaining race (a component replaced by a link between the check and the open) needs write access to the
root, i.e. someone who can already put any video there.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from msjoe.serve.errors import NotFound, PathRefused

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".ogv", ".ts", ".mts"})
MAX_PATH_CHARS = 4096
MAX_LISTED_FILES = 2000


@dataclass(frozen=True)
class Root:
    name: str
    path: Path


class VideoRoots:
    """The folders whose videos may be registered by path. Names are the folders' own names, made unique."""

    def __init__(self, folders: list[str | Path] | tuple[str | Path, ...]) -> None:
        self.roots: list[Root] = []
        for folder in folders:
            path = Path(folder).expanduser().resolve()
            if not path.is_dir():
                raise ValueError(f"video root {folder} is not a folder")
            name, n = path.name or "root", 2
            while any(root.name == name for root in self.roots):
                name, n = f"{path.name or 'root'}-{n}", n + 1
            self.roots.append(Root(name, path))

    def __bool__(self) -> bool:
        return bool(self.roots)

    def root(self, name: str | None) -> Root:
        if not self.roots:
            raise PathRefused("this server has no video roots: upload the video instead")
        if name is None:
            if len(self.roots) > 1:
                raise PathRefused(f"name the root: one of {', '.join(r.name for r in self.roots)}")
            return self.roots[0]
        for root in self.roots:
            if root.name == name:
                return root
        raise PathRefused(f"unknown root {name!r}; roots: {', '.join(r.name for r in self.roots)}")

    def resolve(self, relative: str, root_name: str | None = None) -> tuple[Root, Path]:
        """The root and the file that ``relative`` names under it, or :class:`PathRefused` / :class:`NotFound`."""
        root = self.root(root_name)
        if not relative or len(relative) > MAX_PATH_CHARS or "\x00" in relative:
            raise PathRefused("give a non-empty path relative to a video root")
        if "\\" in relative or PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).anchor:
            raise PathRefused("absolute paths are refused: give a path relative to a video root")
        parts = [part for part in PurePosixPath(relative).parts if part != "."]
        if ".." in parts:
            raise PathRefused("paths with '..' are refused")
        if not parts:
            raise PathRefused("give a path to a video file, not the root itself")
        current = root.path
        for part in parts:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                raise NotFound(f"no such file under root {root.name}: {relative}") from None
            except OSError as error:
                raise PathRefused(f"cannot read {relative} under root {root.name}: {error.strerror}") from None
            if stat.S_ISLNK(mode):
                raise PathRefused("symbolic links are refused")
        if not stat.S_ISREG(mode):
            raise PathRefused(f"{relative} is not a regular file")
        if not current.resolve().is_relative_to(root.path):  # unreachable without links; kept as a second line
            raise PathRefused("the path leaves the video root")
        if current.suffix.lower() not in VIDEO_SUFFIXES:
            raise PathRefused(f"{relative} does not have a video suffix ({', '.join(sorted(VIDEO_SUFFIXES))})")
        return root, current

    def listing(self, limit: int = MAX_LISTED_FILES) -> list[dict[str, object]]:
        """Each root with the videos under it (relative paths, sorted; links are not followed), at most ``limit``
        files in all."""
        result: list[dict[str, object]] = []
        left = limit
        for root in self.roots:
            files: list[str] = []
            for folder, dirs, names in os.walk(root.path, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    path = Path(folder) / name
                    if name.startswith(".") or path.suffix.lower() not in VIDEO_SUFFIXES or path.is_symlink():
                        continue
                    if left <= 0:
                        break
                    files.append(path.relative_to(root.path).as_posix())
                    left -= 1
            result.append({"name": root.name, "files": files, "truncated": left <= 0})
        return result

    def redact(self, text: str) -> str:
        """``text`` with each root's server path replaced by ``<root name>`` (error messages name files)."""
        for root in self.roots:
            text = text.replace(str(root.path), f"<{root.name}>")
        return text
