"""Content-addressed snapshots of the caller's code, for ``Deployment.mirror_local``.

A snapshot is a manifest (which file of which code root has which content hash) plus
one object per distinct file content, named by its hash. Uploading skips what the store
already has, so editing one file of a large repository uploads that file and a new
manifest. On the machine a manifest is materialized once, into a directory per code
root, and reused by every task that names it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import filelock
import pathspec

from meadow_core import protocol
from meadow_core.errors import InvalidRequestError
from meadow_core.transport.base import ObjectStore

#: Never part of a snapshot, in gitignore syntax; a root's ``.meadowignore`` adds more.
DEFAULT_IGNORES = (
    ".git/",
    ".hg/",
    "__pycache__/",
    "*.pyc",
    ".venv/",
    "venv/",
    ".venvs/",
    ".tox/",
    ".nox/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "node_modules/",
    ".eggs/",
    "*.egg-info/",
)
IGNORE_FILE = ".meadowignore"
DEFAULT_EXTENSIONS = (".py", ".so", ".pyd")


@dataclasses.dataclass(frozen=True)
class SnapshotFile:
    root: int  # index into CodeSnapshot.roots
    path: str  # posix path relative to the root
    digest: str  # sha256 of the content
    mode: int  # permission bits, so scripts stay executable


@dataclasses.dataclass
class CodeSnapshot:
    """Which code roots, in ``sys.path`` order, hold which files.

    ``working_root`` is the root that stands for the caller's working directory (the
    remote side runs there) or ``None``; ``on_path`` says which roots go on sys.path.
    """

    roots: list[str]
    on_path: list[bool]
    working_root: int | None
    files: list[SnapshotFile]

    def manifest(self) -> bytes:
        return protocol.pack(
            {
                "roots": self.roots,
                "on_path": self.on_path,
                "working_root": self.working_root,
                "files": sorted([f.root, f.path, f.digest, f.mode] for f in self.files),
            }
        )

    @property
    def key(self) -> str:
        return protocol.content_key(self.manifest(), "code/manifests")

    @classmethod
    def from_manifest(cls, data: bytes) -> CodeSnapshot:
        raw = protocol.unpack(data)
        return cls(
            roots=raw["roots"],
            on_path=raw["on_path"],
            working_root=raw["working_root"],
            files=[SnapshotFile(*entry) for entry in raw["files"]],
        )


def _interpreter_prefixes() -> tuple[str, ...]:
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return tuple(os.path.realpath(p) + os.sep for p in prefixes)


def code_roots_of_sys_path(sys_path: Iterable[str]) -> list[str]:
    """``sys.path`` entries that hold the caller's own code: existing directories outside
    the interpreter and its site-packages (those come with the environment)."""
    prefixes = _interpreter_prefixes()
    roots: list[str] = []
    for entry in sys_path:
        path = os.path.realpath(entry or os.curdir)
        if not os.path.isdir(path) or (path + os.sep).startswith(prefixes):
            continue
        if "site-packages" in Path(path).parts or "dist-packages" in Path(path).parts:
            continue
        if path not in roots:
            roots.append(path)
    return roots


def _ignore_spec(root: Path) -> pathspec.PathSpec[Any]:
    lines = list(DEFAULT_IGNORES)
    ignore_file = root / IGNORE_FILE
    if ignore_file.is_file():
        lines += ignore_file.read_text().splitlines()
    return pathspec.PathSpec.from_lines("gitignore", lines)


def _walk(root: Path, spec: pathspec.PathSpec[Any]) -> Iterable[Path]:
    for directory, dirnames, filenames in os.walk(root):
        relative_dir = Path(directory).relative_to(root)
        kept = []
        for name in dirnames:
            rel = (relative_dir / name).as_posix() + "/"
            # A nested virtualenv is an environment, not code.
            if not spec.match_file(rel) and not (Path(directory, name, "pyvenv.cfg")).exists():
                kept.append(name)
        dirnames[:] = sorted(kept)
        for name in sorted(filenames):
            if not spec.match_file((relative_dir / name).as_posix()):
                yield Path(directory, name)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def build_snapshot(
    roots: Sequence[str],
    extensions: Sequence[str] | None,
    globs: Sequence[str] = (),
    working_directory: str | None = None,
) -> tuple[CodeSnapshot, dict[str, Path]]:
    """Snapshot ``roots`` (files with ``extensions``; every file if ``None``) plus files
    matching ``globs`` relative to ``working_directory``. Returns the snapshot and, per
    content digest, a local file holding it."""
    cwd = os.path.realpath(working_directory or os.getcwd())
    all_roots = [os.path.realpath(r) for r in roots]
    on_path = [True] * len(all_roots)
    if globs and cwd not in all_roots:
        all_roots.append(cwd)
        on_path.append(False)
    working_root = all_roots.index(cwd) if cwd in all_roots else None
    files: dict[tuple[int, str], SnapshotFile] = {}
    sources: dict[str, Path] = {}

    def add(index: int, path: Path) -> None:
        relative = path.relative_to(all_roots[index]).as_posix()
        digest = _digest(path)
        files[(index, relative)] = SnapshotFile(
            index, relative, digest, path.stat().st_mode & 0o777
        )
        sources.setdefault(digest, path)

    for index, root in enumerate(all_roots[: len(roots)]):
        if extensions is not None and not extensions:
            break
        spec = _ignore_spec(Path(root))
        for path in _walk(Path(root), spec):
            if extensions is None or path.suffix in extensions:
                add(index, path)
    for pattern in globs:
        matches = [Path(p) for p in _glob(cwd, pattern)]
        for path in matches:
            real = os.path.realpath(path)
            holder = _root_holding(all_roots, real)
            if holder is None:
                raise InvalidRequestError(
                    f"globs entry {pattern!r} matches {path}, which is outside the working "
                    "directory and every code root; move it or add its folder to "
                    "additional_sys_paths"
                )
            if os.path.isfile(real):
                add(holder, Path(real))
    return CodeSnapshot(all_roots, on_path, working_root, list(files.values())), sources


def _glob(cwd: str, pattern: str) -> list[str]:
    import glob

    base = pattern if os.path.isabs(pattern) else os.path.join(cwd, pattern)
    return sorted(glob.glob(base, recursive=True))


def _root_holding(roots: Sequence[str], path: str) -> int | None:
    best: int | None = None
    for index, root in enumerate(roots):
        if (path + os.sep).startswith(root + os.sep) and (
            best is None or len(root) > len(roots[best])
        ):
            best = index
    return best


def upload_snapshot(
    snapshot: CodeSnapshot, sources: dict[str, Path], store: ObjectStore
) -> tuple[str, int]:
    """Upload file contents the store lacks, then the manifest. Returns the manifest key
    and how many file contents were uploaded."""
    uploaded = 0
    for digest, path in sources.items():
        if store.put_if_absent(f"code/files/{digest}", path.read_bytes()):
            uploaded += 1
    key = snapshot.key
    store.put_if_absent(key, snapshot.manifest())
    return key, uploaded


def materialize(
    manifest_key: str, store: ObjectStore, cache_dir: Path
) -> tuple[list[str], str | None]:
    """Lay a snapshot out under ``cache_dir`` once (concurrent callers wait for the
    first). Returns the directories to put on sys.path, in order, and the working
    directory (``None`` if the snapshot has none)."""
    snapshot = CodeSnapshot.from_manifest(store.get(manifest_key))
    target = cache_dir / manifest_key.rsplit("/", 1)[-1]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(target) + ".lock"):
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".staging-"))
            try:
                for index in range(len(snapshot.roots)):
                    (staging / str(index)).mkdir()
                for entry in snapshot.files:
                    destination = staging / str(entry.root) / entry.path
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes(store.get(f"code/files/{entry.digest}"))
                    destination.chmod(entry.mode)
                (staging / ".complete").touch()
                os.replace(staging, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(staging)
    paths = [str(target / str(i)) for i, on in enumerate(snapshot.on_path) if on]
    working = (
        str(target / str(snapshot.working_root)) if snapshot.working_root is not None else None
    )
    return paths, working
