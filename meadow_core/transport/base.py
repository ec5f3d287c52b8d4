"""Interfaces every place (this machine, an AWS region, an Azure resource group) offers."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from meadow_core.protocol import JobRecord, JobSpec, TaskMessage, TaskOutcome


class ObjectNotFoundError(FileNotFoundError, KeyError):
    """No object under the key (both: the local store raises FileNotFoundError, and
    callers that treat the store as a mapping catch KeyError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "object not found"


class StoredObjectInfo(NamedTuple):
    key: str
    size_bytes: int
    last_modified: float  # seconds since the epoch


class ObjectStore(abc.ABC):
    """Immutable blobs by key: pickled functions, argument blobs, large results, logs.

    Wide enough for every cloud's remote layer (listing, streaming to a file, batch
    deletes, a URL a fresh machine can fetch from), so nothing above the drivers is
    typed to one cloud's store.
    """

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (readers see all of it or nothing)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    def put_file(self, key: str, path: Path) -> None:
        """Store a file's content under ``key``; stores override this to stream it
        (an environment archive can be gigabytes)."""
        self.put(key, path.read_bytes())

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store unless present; content-addressed keys make this the upload-skip path."""
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    @abc.abstractmethod
    def get(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; return how many."""

    @abc.abstractmethod
    def location(self, key: str) -> str:
        """Where a person finds the object (a path or a URL), for messages and logs."""

    def download(self, key: str, path: Path) -> None:
        """Write the object into the file ``path``; stores override this to stream it."""
        path.write_bytes(self.get(key))

    @abc.abstractmethod
    def list_objects(self, prefix: str) -> Iterator[StoredObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, in key order."""
        return [info.key for info in self.list_objects(prefix)]

    def delete_keys(self, keys: Iterable[str]) -> int:
        """Delete these objects (missing ones are no error); returns how many were asked."""
        count = 0
        for key in keys:
            self.delete_prefix(key)
            count += 1
        return count

    def local_path(self, key: str) -> Path | None:
        """The file holding the object when it is on this machine's disk, else None
        (readers then use it in place instead of downloading)."""
        return None


class JobQueue(abc.ABC):
    """Jobs, their queued task attempts and their stored results, for one place.

    The caller submits and cancels; the agent claims, completes and requeues. A claimed
    task stays in the queue until ``complete`` stores its outcome, in one step, so a
    crash anywhere loses no task and stores no result twice.
    """

    @abc.abstractmethod
    def submit(self, spec: JobSpec, tasks: Sequence[TaskMessage]) -> bool:
        """Register the job and enqueue its tasks; False if the job id already exists."""

    @abc.abstractmethod
    def get_spec(self, job_id: str) -> JobSpec | None: ...

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def list_jobs(self, limit: int = 50) -> list[JobRecord]: ...

    @abc.abstractmethod
    def results(self, job_id: str, final_only: bool = True) -> list[TaskOutcome]: ...

    @abc.abstractmethod
    def request_cancel(self, job_id: str) -> bool:
        """Mark a job for cancellation; the agent carries it out. False if unknown."""
