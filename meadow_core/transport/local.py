"""The place ``LocalHost`` uses: a directory as object store and SQLite as job queue.

SQLite in WAL mode with ``synchronous=NORMAL`` survives any process being killed (a
committed transaction is in the OS page cache), lets the caller and the agent write
concurrently, and makes "store the result and acknowledge the task" one transaction.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from meadow_core import protocol
from meadow_core.errors import CorruptDatabaseError
from meadow_core.protocol import JobRecord, JobSpec, TaskMessage, TaskOutcome
from meadow_core.transport.base import JobQueue, ObjectStore, StoredObjectInfo


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``; writes go through a temp file and a rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_from(self, key: str, fill: Callable[[Path], None]) -> None:
        """Store what ``fill`` writes into a temporary file beside the object's place
        (then renamed into it): large objects never pass through memory."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        try:
            fill(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def adopt(self, key: str, path: Path) -> None:
        """Move the file ``path`` into the store as ``key`` (a rename on the same file
        system, a streamed copy otherwise): a large result is never read into memory."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self.put_file(key, path)
            os.unlink(path)

    def put_file(self, key: str, path: Path) -> None:
        def fill(tmp: Path) -> None:
            shutil.copyfile(path, tmp)

        self.put_from(key, fill)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        if path.exists():
            # Touch so age-based pruning keeps what is still being used.
            with contextlib.suppress(OSError):
                os.utime(path)
            return True
        return False

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def file_path(self, key: str) -> Path:
        """The file holding an object, for programs that read files (``tar``)."""
        return self._path(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        with open(self._path(key), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def delete_prefix(self, prefix: str) -> int:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            count = sum(len(files) for _, _, files in os.walk(path))
            shutil.rmtree(path, ignore_errors=True)
            return count
        count = 0
        for candidate in path.parent.glob(path.name + "*") if path.parent.exists() else []:
            if candidate.is_file():
                candidate.unlink(missing_ok=True)
                count += 1
        return count

    def prune_older_than(
        self, prefix: str, max_age_seconds: float, keep: frozenset[str] = frozenset()
    ) -> int:
        """Delete objects under ``prefix`` not written or reused for ``max_age_seconds``,
        except the keys in ``keep``."""
        cutoff = time.time() - max_age_seconds
        count = 0
        base = self._path(prefix)
        if not base.exists():
            return 0
        for path in base.rglob("*"):
            if path.relative_to(self.root).as_posix() in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    count += 1
        return count

    def location(self, key: str) -> str:
        return str(self._path(key))

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def list_objects(self, prefix: str) -> Iterator[StoredObjectInfo]:
        directory = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not directory.is_dir():
            return
        found = []
        for path in directory.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if not key.startswith(prefix) or path.name.startswith(".tmp-"):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if path.is_file():
                    found.append(StoredObjectInfo(key, stat.st_size, stat.st_mtime))
        yield from sorted(found)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    spec BLOB NOT NULL,
    num_tasks INTEGER NOT NULL,
    num_done INTEGER NOT NULL DEFAULT 0,
    num_failed INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0,
    message BLOB NOT NULL,
    UNIQUE (job_id, task_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_job ON tasks (job_id, claimed, seq);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    final INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (job_id, task_id, attempt)
);
"""


_P = ParamSpec("_P")
_R = TypeVar("_R")
_CORRUPTION = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def _names_corruption(
    method: Callable[Concatenate[SqliteJobQueue, _P], _R],
) -> Callable[Concatenate[SqliteJobQueue, _P], _R]:
    """SQLite says "database disk image is malformed" and nothing else; a user needs
    the file and the way out."""

    def checked(self: SqliteJobQueue, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in _CORRUPTION:
                raise
            raise CorruptDatabaseError(
                f"Meadow's queue database {self.path} is damaged ({exc}). It holds this "
                "home's jobs and small results; the jobs recorded in it are lost. Stop the "
                f"agent (`meadow agent stop`), move the files away (`mv {self.path} "
                f"{self.path}.damaged; rm -f {self.path}-wal {self.path}-shm`) and run "
                "again: a new, empty database is created."
            ) from exc

    functools.update_wrapper(checked, method)
    return checked


class SqliteJobQueue(JobQueue):
    """Jobs, tasks and results in one SQLite file shared by callers and the agent.

    One connection per thread (sqlite3 connections are not shared across threads).
    """

    @_names_corruption
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Job environment variables and small results live here: the owner's only (the
        # write-ahead log and shared memory files SQLite makes take this mode too).
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        pid = getattr(self._local, "pid", None)
        if db is None or pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints are the agent's job, once a second, not a caller's commit's.
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._local.db = db
            self._local.pid = os.getpid()
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- caller side -------------------------------------------------------------

    @_names_corruption
    def submit(self, spec: JobSpec, tasks: Sequence[TaskMessage]) -> bool:
        with self._transaction() as db:
            try:
                db.execute(
                    "INSERT INTO jobs (job_id, kind, name, state, spec, num_tasks, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        spec.job_id,
                        spec.kind,
                        spec.name,
                        protocol.JOB_QUEUED,
                        protocol.pack(spec.to_wire()),
                        spec.num_tasks,
                        spec.created,
                    ),
                )
            except sqlite3.IntegrityError:
                return False
            db.executemany(
                "INSERT INTO tasks (job_id, task_id, message) VALUES (?, ?, ?)",
                ((t.job_id, t.task_id, protocol.pack(t.to_wire())) for t in tasks),
            )
        return True

    @_names_corruption
    def get_spec(self, job_id: str) -> JobSpec | None:
        row = self._db().execute("SELECT spec FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return JobSpec.from_wire(protocol.unpack(row[0])) if row else None

    _JOB_COLUMNS = "job_id, kind, name, state, num_tasks, num_done, num_failed, created, finished"

    @_names_corruption
    def get_job(self, job_id: str) -> JobRecord | None:
        row = (
            self._db()
            .execute(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE job_id=?", (job_id,))
            .fetchone()
        )
        return JobRecord(*row) if row else None

    @_names_corruption
    def list_jobs(self, limit: int = 50) -> list[JobRecord]:
        rows = self._db().execute(
            f"SELECT {self._JOB_COLUMNS} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return [JobRecord(*row) for row in rows]

    @_names_corruption
    def results(self, job_id: str, final_only: bool = True) -> list[TaskOutcome]:
        query = "SELECT record FROM results WHERE job_id=?"
        if final_only:
            query += " AND final=1"
        rows = self._db().execute(query + " ORDER BY task_id, attempt", (job_id,))
        return [TaskOutcome.from_wire(protocol.unpack(r[0])) for r in rows]

    @_names_corruption
    def request_cancel(self, job_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET cancel_requested=1 WHERE job_id=? AND state IN (?, ?)",
                (job_id, protocol.JOB_QUEUED, protocol.JOB_RUNNING),
            )
            if cursor.rowcount:
                return True
            return db.execute("SELECT 1 FROM jobs WHERE job_id=?", (job_id,)).fetchone() is not None

    # -- agent side --------------------------------------------------------------

    @_names_corruption
    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database without blocking writers."""
        self._db().execute("PRAGMA wal_checkpoint(PASSIVE)")

    @_names_corruption
    def reset_claims(self) -> int:
        """Return tasks claimed by a previous agent that died to the queue."""
        with self._transaction() as db:
            return db.execute("UPDATE tasks SET claimed=0 WHERE claimed=1").rowcount

    @_names_corruption
    def jobs_with_queued_tasks(self) -> list[str]:
        rows = self._db().execute(
            "SELECT job_id FROM tasks WHERE claimed=0 GROUP BY job_id ORDER BY MIN(seq)"
        )
        return [r[0] for r in rows]

    @_names_corruption
    def cancel_requested_jobs(self) -> list[str]:
        rows = self._db().execute(
            "SELECT job_id FROM jobs WHERE cancel_requested=1 AND state IN (?, ?)",
            (protocol.JOB_QUEUED, protocol.JOB_RUNNING),
        )
        return [r[0] for r in rows]

    @_names_corruption
    def claim(self, job_id: str, limit: int) -> list[TaskMessage]:
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE tasks SET claimed=1 WHERE seq IN (SELECT seq FROM tasks "
                "WHERE job_id=? AND claimed=0 ORDER BY seq LIMIT ?) RETURNING seq, message",
                (job_id, limit),
            ).fetchall()
            if rows:
                db.execute(
                    "UPDATE jobs SET state=? WHERE job_id=? AND state=?",
                    (protocol.JOB_RUNNING, job_id, protocol.JOB_QUEUED),
                )
        rows.sort()
        return [TaskMessage.from_wire(protocol.unpack(r[1])) for r in rows]

    @_names_corruption
    def unclaim(self, messages: Sequence[TaskMessage]) -> None:
        """Hand claimed but unstarted tasks back (agent shutting down)."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE tasks SET claimed=0 WHERE job_id=? AND task_id=?",
                ((m.job_id, m.task_id) for m in messages),
            )

    @_names_corruption
    def complete(
        self, outcomes: Sequence[TaskOutcome], retries: Sequence[TaskMessage] = ()
    ) -> list[str]:
        """Store outcomes and acknowledge their tasks in one transaction.

        ``retries`` replace their task's queued message with the next attempt. Returns
        the ids of jobs this finished.
        """
        finished: list[str] = []
        with self._transaction() as db:
            for outcome in outcomes:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO results (job_id, task_id, attempt, final, record) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        outcome.job_id,
                        outcome.task_id,
                        outcome.attempt,
                        int(outcome.final),
                        protocol.pack(outcome.to_wire()),
                    ),
                )
                if not outcome.final or not cursor.rowcount:
                    continue
                db.execute(
                    "DELETE FROM tasks WHERE job_id=? AND task_id=?",
                    (outcome.job_id, outcome.task_id),
                )
                failed = int(outcome.outcome != protocol.SUCCEEDED)
                db.execute(
                    "UPDATE jobs SET num_done=num_done+1, num_failed=num_failed+? WHERE job_id=?",
                    (failed, outcome.job_id),
                )
            for message in retries:
                db.execute(
                    "UPDATE tasks SET claimed=0, message=? WHERE job_id=? AND task_id=?",
                    (protocol.pack(message.to_wire()), message.job_id, message.task_id),
                )
            for job_id in {o.job_id for o in outcomes if o.final}:
                row = db.execute(
                    "SELECT num_tasks, num_done, num_failed, cancel_requested FROM jobs "
                    "WHERE job_id=? AND finished IS NULL",
                    (job_id,),
                ).fetchone()
                if row and row[1] >= row[0]:
                    state = (
                        protocol.JOB_CANCELLED
                        if row[3]
                        else protocol.JOB_FAILED
                        if row[2]
                        else protocol.JOB_SUCCEEDED
                    )
                    db.execute(
                        "UPDATE jobs SET state=?, finished=? WHERE job_id=?",
                        (state, time.time(), job_id),
                    )
                    finished.append(job_id)
        return finished

    @_names_corruption
    def unclaimed_tasks(self, job_id: str) -> list[TaskMessage]:
        rows = self._db().execute(
            "SELECT message FROM tasks WHERE job_id=? AND claimed=0 ORDER BY seq", (job_id,)
        )
        return [TaskMessage.from_wire(protocol.unpack(r[0])) for r in rows]

    @_names_corruption
    def has_work(self) -> bool:
        """Anything queued, claimed, or waiting to be cancelled."""
        db = self._db()
        if db.execute("SELECT 1 FROM tasks LIMIT 1").fetchone():
            return True
        return bool(self.cancel_requested_jobs())

    @_names_corruption
    def payload_keys_of_unfinished_jobs(self) -> frozenset[str]:
        """Function and argument objects that queued or running jobs still need."""
        keys: set[str] = set()
        for (blob,) in self._db().execute("SELECT spec FROM jobs WHERE finished IS NULL"):
            spec = JobSpec.from_wire(protocol.unpack(blob))
            keys.update(
                k for k in (spec.function_key, spec.args_key, spec.environment.code_manifest) if k
            )
        return frozenset(keys)

    @_names_corruption
    def prune(self, older_than_seconds: float) -> list[str]:
        """Forget jobs that finished more than ``older_than_seconds`` ago; return their ids."""
        cutoff = time.time() - older_than_seconds
        with self._transaction() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT job_id FROM jobs WHERE finished IS NOT NULL AND finished < ?",
                    (cutoff,),
                )
            ]
            for job_id in ids:
                db.execute("DELETE FROM results WHERE job_id=?", (job_id,))
                db.execute("DELETE FROM jobs WHERE job_id=?", (job_id,))
        return ids
