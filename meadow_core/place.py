"""A *place* is where a host keeps work and payloads: its object store and job queue.

``LocalPlace`` is this machine's: a home directory holding the SQLite queue, the
object store directory and the agent's lock, pid and log files, plus the abstract Unix
socket the agent listens on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import stat
import struct
import sys
from pathlib import Path

import platformdirs

from meadow_core.errors import UnsafeHomeError
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
        make_private_home(self.home)
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

    @property
    def spill_dir(self) -> Path:
        """Where workers pickle large results for the agent to adopt into the store."""
        return self.scratch_dir / "results"


def make_private_home(home: Path) -> None:
    """Create ``home`` readable and writable by its owner only (whatever the umask), or
    check an existing one: it must be this user's and writable by nobody else, as ssh
    refuses a key others can write. Anyone who can write the home can plant jobs its
    agent runs as its owner."""
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        home.mkdir(mode=0o700)
        os.chmod(home, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    info = home.stat()
    if info.st_uid != os.geteuid():
        raise UnsafeHomeError(
            f"the Meadow home {home} belongs to uid {info.st_uid}, not to you (uid "
            f"{os.geteuid()}): set MEADOW_HOME (or LocalHost(home=...)) to a folder of yours"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeHomeError(
            f"the Meadow home {home} can be written by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}), who could plant jobs that run as you: run "
            f"`chmod 700 {home}` or use another home"
        )


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (the kernel's word,
    not the peer's)."""
    if hasattr(socket, "SO_PEERCRED"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    uid, _ = sock.getpeereid()  # type: ignore[attr-defined]  # BSD, macOS
    return int(uid)
