"""Content-addressed snapshots of the caller's code, for ``Deployment.mirror_local``.

A snapshot is a manifest (which file of which code root has which content hash) plus
one object per distinct content, named by its hash: a small file is one object
(``code/files/<sha256>``); a file above ``CHUNK_THRESHOLD`` is cut into content-defined
chunks (FastCDC, ``code/chunks/<sha256>``), so editing a few bytes in the middle of a
large file changes about one chunk, not the whole file. Uploading skips what the store
already has. On the machine a manifest is materialized once, into a directory per code
root, and reused by every task that names it.

Snapshotting again is cheap: digests are cached in this process by each file's
(size, mtime, ctime, inode, device), so only files that changed are read again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import glob
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import filelock
import pathspec
from pyfastcdc import FastCDC

from meadow_core import protocol
from meadow_core.errors import InvalidRequestError, MeadowError
from meadow_core.keys import CODE_CHUNKS, CODE_FILES, CODE_MANIFESTS
from meadow_core.transport.base import ObjectStore
from meadow_core.transport.local import LocalObjectStore

log = logging.getLogger("meadow.code")

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

#: Files larger than this are stored as content-defined chunks instead of one object.
CHUNK_THRESHOLD = 4 << 20
#: FastCDC's target chunk size (chunks are 256 KiB to 4 MiB). Changing it changes every
#: chunk boundary: old chunks stay valid but are no longer shared with new snapshots.
CHUNK_AVG_SIZE = 1 << 20
FILES_PREFIX = CODE_FILES
CHUNKS_PREFIX = CODE_CHUNKS

#: A file whose mtime or ctime is this close to when it was read is hashed again next
#: time: a write in the same timestamp tick would not change its fingerprint.
_RACY_NS = 2_000_000_000
#: Small files read while hashing are kept for the upload, up to this many bytes in all.
_KEEP_BYTES = 128 << 20
_THREADS = min(8, 2 * (os.cpu_count() or 1))
#: Files above this size are hashed in worker threads (hashlib releases the GIL).
_THREADED_SIZE = 1 << 20


class SnapshotChangedError(MeadowError):
    """A file changed between being hashed and being uploaded."""


class SnapshotFile(NamedTuple):
    """One file of a snapshot (a named tuple: snapshots of thousands of files are built
    on every call, so construction cost counts)."""

    root: int  # index into CodeSnapshot.roots
    path: str  # posix path relative to the root
    digest: str  # sha256 of the whole content
    mode: int  # permission bits, so scripts stay executable
    #: sha256 of each content-defined chunk in order; empty: one object ``code/files/<digest>``
    chunks: tuple[str, ...] = ()

    def object_keys(self) -> list[str]:
        if self.chunks:
            return [f"{CHUNKS_PREFIX}/{c}" for c in self.chunks]
        return [f"{FILES_PREFIX}/{self.digest}"]


@dataclasses.dataclass
class CodeSnapshot:
    """Which code roots, in ``sys.path`` order, hold which files.

    ``working_root`` is the root that stands for the caller's working directory (the
    remote side runs there) or ``None``; ``on_path`` says which roots go on sys.path.
    ``path_subdirs`` (one per root, ``""`` for the root itself) names the folder of a
    root that goes on sys.path: a git checkout ships whole, as the working directory,
    with only its ``path_to_source`` importable, as on Meadowrun.
    """

    roots: list[str]
    on_path: list[bool]
    working_root: int | None
    files: list[SnapshotFile]
    path_subdirs: list[str] = dataclasses.field(default_factory=list)

    def sys_path_subdir(self, root: int) -> str:
        """The folder of ``root`` that goes on sys.path (``""``: the root itself)."""
        subdir = self.path_subdirs[root] if root < len(self.path_subdirs) else ""
        if subdir.startswith("/") or ".." in subdir.split("/"):
            raise MeadowError(f"the code snapshot's sys.path folder {subdir!r} leaves its root")
        return subdir

    def manifest(self) -> bytes:
        # A chunked file's entry has a fifth element; others keep the original four, so
        # a snapshot without large files has the same manifest (and key) as before.
        entries = sorted(
            [f.root, f.path, f.digest, f.mode, list(f.chunks)]
            if f.chunks
            else [f.root, f.path, f.digest, f.mode]
            for f in self.files
        )
        manifest: dict[str, object] = {
            "roots": self.roots,
            "on_path": self.on_path,
            "working_root": self.working_root,
            "files": entries,
        }
        if any(self.path_subdirs):  # absent otherwise: other manifests keep their keys
            manifest["path_subdirs"] = self.path_subdirs
        return protocol.pack(manifest)

    @property
    def key(self) -> str:
        return protocol.content_key(self.manifest(), CODE_MANIFESTS)

    def object_keys(self) -> list[str]:
        """Every content object the snapshot needs, each once."""
        return list(dict.fromkeys(k for f in self.files for k in f.object_keys()))

    @classmethod
    def from_manifest(cls, data: bytes) -> CodeSnapshot:
        raw = protocol.unpack(data)
        return cls(
            roots=raw["roots"],
            on_path=raw["on_path"],
            working_root=raw["working_root"],
            files=[
                SnapshotFile(e[0], e[1], e[2], e[3], tuple(e[4]) if len(e) > 4 else ())
                for e in raw["files"]
            ],
            path_subdirs=list(raw.get("path_subdirs", [])),
        )


class _Chunk(NamedTuple):
    digest: str
    offset: int
    length: int


class _Content(NamedTuple):
    digest: str
    chunks: tuple[_Chunk, ...] = ()


class _Piece(NamedTuple):
    """Where an object's bytes are on this machine (``data`` if still in memory)."""

    path: str
    offset: int
    length: int
    digest: str
    whole_file: bool
    data: bytes | None = None


class SnapshotSources:
    """Object key -> where its bytes are on this machine, for uploading what is missing."""

    def __init__(self) -> None:
        self._pieces: dict[str, _Piece] = {}

    def __len__(self) -> int:
        return len(self._pieces)

    def __contains__(self, key: object) -> bool:
        return key in self._pieces

    def keys(self) -> list[str]:
        return list(self._pieces)

    def size(self, key: str) -> int:
        return self._pieces[key].length

    def read(self, key: str) -> bytes:
        """The object's bytes, checked against its hash: a file edited after it was
        hashed must not be stored under its old content's name."""
        piece = self._pieces[key]
        if piece.data is not None:
            return piece.data
        with open(piece.path, "rb") as f:
            f.seek(piece.offset)
            data = f.read(piece.length)
        if hashlib.sha256(data).hexdigest() != piece.digest:
            raise SnapshotChangedError(
                f"{piece.path} changed while its code snapshot was being taken; run again"
            )
        return data

    def objects(self) -> dict[str, bytes | Path]:
        """Objects in the form ``Host.submit`` takes: whole files not in memory as paths
        (read only if the store lacks them), everything else as bytes."""
        return {
            key: Path(p.path) if p.data is None and p.whole_file else self.read(key)
            for key, p in self._pieces.items()
        }


# -- hashing, with a per-process cache ------------------------------------------------

_Fingerprint = tuple[int, int, int, int, int]
_cache: dict[str, tuple[_Fingerprint, _Content]] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 500_000


def clear_caches() -> None:
    """Forget every cached digest and what stores are known to hold (benchmarks measure
    a first snapshot with this)."""
    with _cache_lock:
        _cache.clear()
        _present.clear()


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _hash_file(path: str, size: int) -> tuple[_Content, bytes | None]:
    if size <= CHUNK_THRESHOLD:
        with open(path, "rb") as f:
            data = f.read()
        return _Content(hashlib.sha256(data).hexdigest()), data
    whole = hashlib.sha256()
    chunks = []
    with open(path, "rb") as f:  # a stream, not mmap: a file truncated meanwhile is no crash
        for chunk in FastCDC(CHUNK_AVG_SIZE).cut_stream(f):
            whole.update(chunk.data)
            digest = hashlib.sha256(chunk.data).hexdigest()
            chunks.append(_Chunk(digest, chunk.offset, chunk.length))
    return _Content(whole.hexdigest(), tuple(chunks)), None


class _Found(NamedTuple):
    root: int
    relative: str
    path: str
    st: os.stat_result


def _hash_all(found: Sequence[_Found]) -> list[tuple[_Content, bytes | None]]:
    """Every file's content hash (and its bytes, if it was read and is small): from the
    cache if its fingerprint is unchanged, else by reading it."""
    results: list[tuple[_Content, bytes | None] | None] = []
    todo: list[int] = []
    with _cache_lock:
        for index, entry in enumerate(found):
            st = entry.st
            cached = _cache.get(entry.path)
            if cached is not None and cached[0] == (
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_ino,
                st.st_dev,
            ):
                results.append((cached[1], None))
            else:
                results.append(None)
                todo.append(index)
    if todo:
        _hash_missing(found, todo, results)
    return [r for r in results if r is not None]


def _hash_missing(
    found: Sequence[_Found], todo: list[int], results: list[tuple[_Content, bytes | None] | None]
) -> None:
    started = time.time_ns()

    def work(index: int) -> None:
        results[index] = _hash_file(found[index].path, found[index].st.st_size)

    # Small files cost Python time more than hashing time: threads would only fight over
    # the GIL. Large ones are hashed with the GIL released, so they go to threads.
    large = [i for i in todo if found[i].st.st_size > _THREADED_SIZE]
    with concurrent.futures.ThreadPoolExecutor(min(_THREADS, max(1, len(large)))) as pool:
        futures = [pool.submit(work, i) for i in large]
        for index in todo:
            if found[index].st.st_size <= _THREADED_SIZE:
                work(index)
        for future in futures:
            future.result()
    kept = 0
    with _cache_lock:
        if len(_cache) + len(todo) > _CACHE_MAX:
            _cache.clear()
        for index in todo:
            st = found[index].st
            result = results[index]
            assert result is not None
            if max(st.st_mtime_ns, st.st_ctime_ns) < started - _RACY_NS:
                _cache[found[index].path] = (_fingerprint(st), result[0])
            if result[1] is not None:
                kept += len(result[1])
                if kept > _KEEP_BYTES:
                    results[index] = (result[0], None)


# -- choosing files -------------------------------------------------------------------


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


class _Ignores:
    """A root's ignore rules. Without negations (``!pattern``), the rules fold into one
    regular expression for directories and one for files (a file needs no directory-only
    rule: the walk never enters an ignored directory): one match per path, not per rule."""

    def __init__(self, root: str) -> None:
        lines = list(DEFAULT_IGNORES)
        ignore_file = os.path.join(root, IGNORE_FILE)
        if os.path.isfile(ignore_file):
            with open(ignore_file) as f:
                lines += f.read().splitlines()
        self.spec = pathspec.PathSpec.from_lines("gitignore", lines)
        self._dirs: re.Pattern[str] | None = None
        self._files: re.Pattern[str] | None = None
        patterns = [p for p in self.spec.patterns if p.include is not None]
        regexes = [
            r.pattern for p in patterns if isinstance(r := getattr(p, "regex", None), re.Pattern)
        ]
        if len(regexes) == len(patterns) and all(p.include for p in patterns):
            with contextlib.suppress(re.error):
                self._dirs = re.compile("|".join(f"(?:{r})" for r in regexes))
                self._files = re.compile(
                    "|".join(f"(?:{r})" for r in regexes if not r.endswith("/")) or "(?!)"
                )

    def directory(self, relative: str) -> bool:
        """Whether the directory ``relative`` (posix, with a trailing ``/``) is ignored."""
        if self._dirs is not None:
            return self._dirs.match(relative) is not None
        return self.spec.match_file(relative)

    def file(self, relative: str) -> bool:
        """Whether the file ``relative`` (posix) in a directory that is not ignored is."""
        if self._files is not None:
            return self._files.match(relative) is not None
        return self.spec.match_file(relative)


def _walk(
    root: str, ignored: _Ignores, want: Callable[[str], bool]
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(posix path relative to ``root``, entry) of every regular file under ``root``
    that is not ``ignored`` and that ``want`` accepts by name. Symlinked directories and
    directories holding a ``pyvenv.cfg`` (a virtualenv is an environment, not code) are
    not entered; a symlinked file counts only if its target is inside ``root``."""
    pending = [("", root)]
    while pending:
        relative_dir, directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            relative = relative_dir + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not ignored.directory(relative + "/") and not os.path.exists(
                        os.path.join(entry.path, "pyvenv.cfg")
                    ):
                        pending.append((relative + "/", entry.path))
                elif want(entry.name) and entry.is_file() and not ignored.file(relative):
                    if entry.is_symlink():
                        target = os.path.realpath(entry.path)
                        if not target.startswith(root + os.sep):
                            # Never ship what a link outside the code root points at
                            # (a link to /etc/shadow, to another user's files).
                            log.warning(
                                "not shipping %s: it links to %s, outside %s",
                                entry.path,
                                target,
                                root,
                            )
                            continue
                    yield relative, entry
            except OSError:
                continue  # vanished or unreadable: not part of the snapshot


def build_snapshot(
    roots: Sequence[str],
    extensions: Sequence[str] | None,
    globs: Sequence[str] = (),
    working_directory: str | None = None,
    path_subdirs: Sequence[str] = (),
) -> tuple[CodeSnapshot, SnapshotSources]:
    """Snapshot ``roots`` (files with ``extensions``; every file if ``None``) plus files
    matching ``globs`` relative to ``working_directory``; ``path_subdirs`` (one per
    root) puts a folder of a root on sys.path instead of the root. Returns the snapshot
    and where each of its objects is on this machine."""
    cwd = os.path.realpath(working_directory or os.getcwd())
    all_roots = [os.path.realpath(r) for r in roots]
    on_path = [True] * len(all_roots)
    if globs and cwd not in all_roots:
        all_roots.append(cwd)
        on_path.append(False)
    working_root = all_roots.index(cwd) if cwd in all_roots else None
    found: dict[tuple[int, str], _Found] = {}

    if extensions is None or extensions:
        suffixes = tuple(extensions) if extensions is not None else None

        def want(name: str) -> bool:
            return suffixes is None or os.path.splitext(name)[1] in suffixes

        for index, root in enumerate(all_roots[: len(roots)]):
            for relative, entry in _walk(root, _Ignores(root), want):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                found[(index, relative)] = _Found(index, relative, entry.path, st)
    for pattern in globs:
        for match in _glob(cwd, pattern):
            real = os.path.realpath(match)
            holder = _root_holding(all_roots, real)
            if holder is None:
                raise InvalidRequestError(
                    f"globs entry {pattern!r} matches {match}, which is outside the working "
                    "directory and every code root; move it or add its folder to "
                    "additional_sys_paths"
                )
            if os.path.isfile(real):
                relative = Path(real).relative_to(all_roots[holder]).as_posix()
                found[(holder, relative)] = _Found(holder, relative, real, os.stat(real))

    entries = list(found.values())
    files: list[SnapshotFile] = []
    sources = SnapshotSources()
    pieces = sources._pieces
    for e, (content, data) in zip(entries, _hash_all(entries), strict=True):
        mode = e.st.st_mode & 0o777
        if not content.chunks:
            files.append(SnapshotFile(e.root, e.relative, content.digest, mode))
            key = f"{FILES_PREFIX}/{content.digest}"
            if key not in pieces or data is not None:
                pieces[key] = _Piece(e.path, 0, e.st.st_size, content.digest, True, data)
            continue
        chunks = tuple(c.digest for c in content.chunks)
        files.append(SnapshotFile(e.root, e.relative, content.digest, mode, chunks))
        for c in content.chunks:
            pieces.setdefault(
                f"{CHUNKS_PREFIX}/{c.digest}", _Piece(e.path, c.offset, c.length, c.digest, False)
            )
    subdirs = [Path(d).as_posix() if d not in ("", ".") else "" for d in path_subdirs]
    subdirs += [""] * (len(all_roots) - len(subdirs))
    return CodeSnapshot(all_roots, on_path, working_root, files, subdirs), sources


def _glob(cwd: str, pattern: str) -> list[str]:
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


# -- upload and materialize -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UploadStats:
    key: str  # the manifest's key
    objects: int  # content objects uploaded (the store lacked them)
    bytes: int  # bytes of those objects
    manifest_bytes: int  # bytes of the manifest (0 if the store had it)


#: Objects this process saw in (or put into) a store in the last ``_PRESENT_TTL`` seconds
#: are not asked about again. Safe because a store prunes only what nobody wrote or
#: checked for far longer (days), and checking touches an object.
_PRESENT_TTL = 300.0
_present: dict[tuple[str, str], float] = {}


def upload_snapshot_stats(
    snapshot: CodeSnapshot, sources: SnapshotSources, store: ObjectStore
) -> UploadStats:
    """Upload the contents the store lacks, then the manifest, so a stored manifest
    always has its contents. A cloud store's round trips dominate, so that one runs in
    threads; a local store's Python overhead does, so that one runs in this thread."""
    keys = snapshot.object_keys()
    missing = [k for k in keys if k not in sources]
    if missing:
        raise KeyError(f"no local source for {missing[0]} of the snapshot")
    store_id = store.location(FILES_PREFIX)
    now = time.monotonic()
    fresh = now - _PRESENT_TTL
    with _cache_lock:
        if len(_present) > _CACHE_MAX:
            _present.clear()
        keys = [k for k in keys if _present.get((store_id, k), fresh) <= fresh]

    def upload(key: str) -> int:
        if store.exists(key):
            return -1
        data = sources.read(key)
        store.put(key, data)
        return len(data)

    threads = 1 if isinstance(store, LocalObjectStore) else _THREADS
    if len(keys) >= 32 and threads > 1:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            sizes = list(pool.map(upload, keys))
    else:
        sizes = [upload(k) for k in keys]
    with _cache_lock:
        _present.update(((store_id, k), now) for k in keys)
    manifest = snapshot.manifest()
    key = protocol.content_key(manifest, CODE_MANIFESTS)
    stored = store.put_if_absent(key, manifest)
    return UploadStats(
        key=key,
        objects=sum(1 for s in sizes if s >= 0),
        bytes=sum(s for s in sizes if s > 0),
        manifest_bytes=len(manifest) if stored else 0,
    )


def upload_snapshot(
    snapshot: CodeSnapshot, sources: SnapshotSources, store: ObjectStore
) -> tuple[str, int]:
    """Upload what the store lacks. Returns the manifest key and how many content
    objects (files or chunks) were uploaded."""
    stats = upload_snapshot_stats(snapshot, sources, store)
    return stats.key, stats.objects


def _write_file(store: ObjectStore, destination: Path, entry: SnapshotFile) -> None:
    if not entry.chunks:
        destination.write_bytes(store.get(f"{FILES_PREFIX}/{entry.digest}"))
    else:
        whole = hashlib.sha256()
        with open(destination, "wb") as f:
            for key in entry.object_keys():
                data = store.get(key)
                whole.update(data)
                f.write(data)
        if whole.hexdigest() != entry.digest:
            raise MeadowError(
                f"the chunks of {entry.path} in the code snapshot do not add up to its "
                "content; the object store is damaged"
            )
    destination.chmod(entry.mode)


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
                destinations = [staging / str(e.root) / e.path for e in snapshot.files]
                for parent in sorted({d.parent for d in destinations}):
                    parent.mkdir(parents=True, exist_ok=True)
                with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
                    list(
                        pool.map(
                            _write_file, [store] * len(destinations), destinations, snapshot.files
                        )
                    )
                (staging / ".complete").touch()
                os.replace(staging, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(staging)
    paths = [
        str(target / str(i) / snapshot.sys_path_subdir(i)).rstrip("/")
        for i, on in enumerate(snapshot.on_path)
        if on
    ]
    working = (
        str(target / str(snapshot.working_root)) if snapshot.working_root is not None else None
    )
    return paths, working
