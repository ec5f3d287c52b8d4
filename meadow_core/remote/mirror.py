"""Objects a machine needs, copied from the remote store into its local one once each.

Every worker loop of a job prefetches the same function, code and environment archive
before its first task. Without coordination a 16-worker instance downloads a
multi-gigabyte archive 16 times at once, into memory. Here each key is fetched by one
thread while the others wait for it, and objects stream to disk.
"""

from __future__ import annotations

import threading

from meadow_core.transport.base import ObjectStore
from meadow_core.transport.local import LocalObjectStore


class StoreMirror:
    """Copies keys between a remote store and this machine's store, each key once."""

    def __init__(self, remote: ObjectStore, local: LocalObjectStore) -> None:
        self.remote = remote
        self.local = local
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def copy_down(self, key: str) -> None:
        """Make ``key`` present locally; concurrent calls for one key download it once."""
        if self.local.exists(key):
            return
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if not self.local.exists(key):  # another thread fetched it while we waited
                self.local.put_from(key, lambda path: self.remote.download(key, path))
        with self._lock:
            self._key_locks.pop(key, None)

    def copy_up(self, key: str) -> None:
        """Make a local object (a large result) present remotely, streamed from its file."""
        if not self.remote.exists(key):
            self.remote.put_file(key, self.local.file_path(key))
