"""``Host``: the interface between the public API and a place that runs jobs.

The API (``meadow_core.api``) does everything that is the same on every host: it
validates, pickles, builds the job spec and tasks, and decodes results. A host only
checks resources against what it can provide, moves bytes and messages to its place,
and follows a job's outcomes.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from meadow_core.protocol import Environment, JobRecord, JobSpec, TaskMessage, TaskOutcome
from meadow_core.resources import Resources
from meadow_core.watch import JobWatch


class Host(abc.ABC):
    """Where to run a job: ``LocalHost``, ``AllocEC2Instance`` (``AllocAzureVM`` later)."""

    #: The host's machines do not share this one's files: there the default
    #: ``Deployment()`` means "mirror the caller's code and environment" (Meadowrun's
    #: ``mirror_local()``), as nothing can be used in place.
    runs_elsewhere: bool = False

    @abc.abstractmethod
    def check_resources(self, resources: Resources) -> None:
        """Raise ``UnsatisfiableResourcesError`` if no machine of this host fits ``resources``."""

    @abc.abstractmethod
    def default_resources(self) -> Resources:
        """Resources of a task that asked for none."""

    @abc.abstractmethod
    def environment(self, environment_variables: Mapping[str, str]) -> Environment:
        """The environment tasks of the caller's own deployment run in on this host."""

    @abc.abstractmethod
    async def submit(
        self, spec: JobSpec, tasks: Sequence[TaskMessage], objects: Mapping[str, bytes | Path]
    ) -> bool:
        """Upload ``objects`` (skipping those present; a ``Path`` is read only when its
        key is missing), register the job and enqueue its tasks. Returns False,
        changing nothing, when the job id already exists."""

    @abc.abstractmethod
    def watch(
        self, job_id: str, num_tasks: int, kind: str, new: bool = False
    ) -> contextlib.AbstractAsyncContextManager[JobWatch]:
        """Follow a job's outcomes (replaying those already stored) and its live logs.

        ``new`` means the job is about to be submitted: watching starts before it exists,
        so not even its first log line is missed.
        """

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> bool:
        """Cancel a job: queued tasks are dropped, running ones killed. False if unknown."""

    @abc.abstractmethod
    async def get_spec(self, job_id: str) -> JobSpec | None: ...

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def list_jobs(self, limit: int = 50) -> list[JobRecord]: ...

    @abc.abstractmethod
    async def results(self, job_id: str) -> list[TaskOutcome]:
        """Final outcomes stored so far, without waiting."""

    @abc.abstractmethod
    async def read_object(self, key: str) -> bytes:
        """Bytes of a stored object: a large result, a task's log, an adapter's output."""

    @abc.abstractmethod
    async def write_object(self, key: str, data: bytes) -> None:
        """Store bytes under ``key`` in the host's object store (adapters keep outputs
        there that task code reads back through ``current_task().store``)."""

    @abc.abstractmethod
    def object_location(self, key: str) -> str:
        """Where a person finds a stored object (a path or URL)."""
