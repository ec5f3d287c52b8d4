"""A *place* is where a host keeps work and payloads: its object store and job queue.

``LocalPlace`` is this machine's: a home directory holding the SQLite queue, the
object store directory and the agent's lock, pid and log files, plus the abstract Unix
socket the agent listens on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from pathlib import Path

import platformdirs

from meadow_core.transport.local import LocalObjectStore, SqliteJobQueue


def default_home() -> Path:
    """``$MEADOW_HOME``, else the platform's per-user state directory."""
    env = os.environ.get("MEADOW_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_state_dir("meadow")) / "local"


@dataclasses.dataclass
class LocalPlace:
    """Paths and transports of one local home directory."""

    home: Path

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self._store: LocalObjectStore | None = None
        self._queue: SqliteJobQueue | None = None

    @property
    def store(self) -> LocalObjectStore:
        if self._store is None:
            self._store = LocalObjectStore(self.home / "store")
        return self._store

    @property
    def queue(self) -> SqliteJobQueue:
        if self._queue is None:
            self._queue = SqliteJobQueue(self.home / "meadow.db")
        return self._queue

    @property
    def socket_address(self) -> str:
        """Abstract-namespace socket on Linux (no file to leak, no path length limit)."""
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:24]
        if sys.platform.startswith("linux"):
            return f"\0meadow-agent-{digest}"
        return str(self.home / "agent.sock")

    @property
    def agent_lock_path(self) -> Path:
        return self.home / "agent.lock"

    @property
    def spawn_lock_path(self) -> Path:
        return self.home / "spawn.lock"

    @property
    def agent_pid_path(self) -> Path:
        return self.home / "agent.pid"

    @property
    def agent_log_path(self) -> Path:
        return self.home / "agent.log"

    @property
    def scratch_dir(self) -> Path:
        return self.home / "scratch"
