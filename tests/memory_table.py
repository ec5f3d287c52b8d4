"""An in-memory ``VersionedTable`` for tests of the generic layers: what a cloud's
table driver must do (atomic insert-if-absent and replace-if-version), nothing more."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any


class MemoryVersionedTable:
    """``latency_seconds`` is a round trip's time after each read (outside the lock),
    so concurrent read-modify-write cycles really interleave, as over a network."""

    def __init__(self, latency_seconds: float = 0.001) -> None:
        self._items: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        self._lock = threading.Lock()
        self.latency_seconds = latency_seconds

    def get(self, kind: str, key: str) -> tuple[dict[str, Any], str] | None:
        with self._lock:
            found = self._items.get((kind, key))
            copied = None if found is None else (copy.deepcopy(found[0]), str(found[1]))
        time.sleep(self.latency_seconds)
        return copied

    def insert(self, kind: str, key: str, item: Mapping[str, Any]) -> bool:
        with self._lock:
            if (kind, key) in self._items:
                return False
            self._items[(kind, key)] = (copy.deepcopy(dict(item)), 1)
            return True

    def replace(self, kind: str, key: str, item: Mapping[str, Any], if_version: str) -> bool:
        with self._lock:
            found = self._items.get((kind, key))
            if found is None or str(found[1]) != if_version:
                return False
            self._items[(kind, key)] = (copy.deepcopy(dict(item)), found[1] + 1)
            return True

    def delete(self, kind: str, key: str) -> None:
        with self._lock:
            self._items.pop((kind, key), None)

    def scan(self, kind: str) -> Iterator[tuple[str, dict[str, Any], str]]:
        with self._lock:
            rows = [
                (k, copy.deepcopy(v[0]), str(v[1]))
                for (t, k), v in self._items.items()
                if t == kind
            ]
        yield from rows
