"""What a LocalHost home keeps for reuse, and pruning it least recently used first.

Built environments (``home/envs``) and materialized code (``home/code``) are this
machine's cache; packed environments and code contents in the store are what other
machines download. ``meadow cache`` lists and prunes both.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from meadow_core import keys
from meadow_core.place import LocalPlace


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    kind: str  # "environment", "code", "stored environment", "stored code"
    key: str
    path: Path
    size_bytes: int
    last_used: float


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _last_used(path: Path) -> float:
    marker = path / ".complete"
    return (marker if marker.exists() else path).stat().st_mtime


def cache_entries(place: LocalPlace) -> list[CacheEntry]:
    """Every cache entry of a home, least recently used first."""
    entries = []
    for kind, folder in (("environment", place.home / "envs"), ("code", place.home / "code")):
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_dir() and not path.name.startswith("."):
                    entries.append(CacheEntry(kind, path.name, path, _size(path), _last_used(path)))
    stored = (
        ("stored environment", keys.ENV_PACKED),
        ("stored code", keys.CODE_FILES),
        ("stored code", keys.CODE_CHUNKS),
    )
    for kind, prefix in stored:
        folder = place.store.root / prefix
        if folder.is_dir():
            for path in folder.iterdir():
                stat = path.stat()
                entries.append(CacheEntry(kind, path.name, path, stat.st_size, stat.st_mtime))
    return sorted(entries, key=lambda e: e.last_used)


def prune(
    place: LocalPlace, max_bytes: int | None = None, older_than_seconds: float | None = None
) -> list[CacheEntry]:
    """Remove entries, least recently used first, until the total is at most
    ``max_bytes`` and nothing is older than ``older_than_seconds``. Returns what went."""
    entries = cache_entries(place)
    total = sum(e.size_bytes for e in entries)
    cutoff = time.time() - older_than_seconds if older_than_seconds is not None else None
    removed = []
    for entry in entries:
        too_big = max_bytes is not None and total > max_bytes
        too_old = cutoff is not None and entry.last_used < cutoff
        if not (too_big or too_old):
            continue
        if entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
            Path(str(entry.path) + ".lock").unlink(missing_ok=True)
        else:
            entry.path.unlink(missing_ok=True)
        total -= entry.size_bytes
        removed.append(entry)
    return removed
