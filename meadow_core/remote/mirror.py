"""Objects a machine needs, copied from the remote store into its local one once each.

Every worker loop of a job prefetches the same function, code and environment archive
before its first task. Without coordination a 16-worker instance downloads a
multi-gigabyte archive 16 times at once, into memory. Here each key is fetched by one
thread while the others wait for it, and objects stream to disk. A content-addressed
object is checked against its key before it is kept: one overwritten in the store (by a
task with write access to it, say) is refused, never run.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from meadow_core import keys
from meadow_core.errors import MeadowError
from meadow_core.transport.base import ObjectStore
from meadow_core.transport.local import LocalObjectStore


class TamperedObjectError(MeadowError):
    """A content-addressed object's bytes do not match its key."""


def check_content(key: str, path: Path, where: str) -> None:
    """Raise ``TamperedObjectError`` if the file does not hash to what ``key`` promises."""
    expected = keys.content_digest(key)
    if expected is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise TamperedObjectError(
            f"{where} does not match its content address (sha256 {digest.hexdigest()}): it "
            "was overwritten in the store; refusing to use it. Delete it there and submit "
            "the job again"
        )


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

                def fetch(path: Path) -> None:
                    self.remote.download(key, path)
                    check_content(key, path, self.remote.location(key))

                self.local.put_from(key, fetch)
        with self._lock:
            self._key_locks.pop(key, None)

    def copy_up(self, key: str) -> None:
        """Make a local object (a large result) present remotely, streamed from its file."""
        if not self.remote.exists(key):
            self.remote.put_file(key, self.local.file_path(key))
