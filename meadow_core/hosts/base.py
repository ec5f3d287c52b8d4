"""``Host``: the interface between the public API and a place that runs jobs.

The API (``meadow_core.api``) does everything that is the same on every host: it
validates, pickles, builds the job spec and tasks, and decodes results. A host only
checks resources against what it can provide, moves bytes and messages to its place,
and follows a job's outcomes.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meadow_core.errors import InvalidRequestError
from meadow_core.protocol import Environment, JobRecord, JobSpec, TaskMessage, TaskOutcome
from meadow_core.resources import Resources
from meadow_core.watch import JobWatch

if TYPE_CHECKING:
    from meadow_core.hosts.config import HostSetting
    from meadow_core.transport.base import ObjectStore

#: What an orchestrator hands a host as credentials (``Host.credentials``): a cloud
#: SDK's session object (a ``boto3.Session``; an Azure credential later) or a mapping of
#: settings the host documents. Cloud-neutral on purpose: adapters pass what their
#: orchestrator's own mechanism produced and never import ``meadow_core.clouds``.
Credentials = object


class Host(abc.ABC):
    """Where to run a job: ``LocalHost``, ``AllocEC2Instance`` (``AllocAzureVM`` later)."""

    #: The host's machines do not share this one's files: there the default
    #: ``Deployment()`` means "mirror the caller's code and environment" (Meadowrun's
    #: ``mirror_local()``), as nothing can be used in place.
    runs_elsewhere: bool = False
    #: The host talks to a cloud account and ``credentials`` applies what it is given;
    #: adapters need not read an orchestrator's connection for a host without it.
    takes_credentials: bool = False

    # -- config and credentials (``meadow_core.hosts.config``) ----------------------------

    @classmethod
    def config_schema(cls) -> list[HostSetting]:
        """The settings ``host_from_config`` accepts for this host: its dataclass fields,
        for adapters that build their own schema (Dagster ``Field``s)."""
        from meadow_core.hosts.config import settings_of

        return settings_of(cls)

    def config_settings(self) -> dict[str, Any]:
        """This host's settings as constructor arguments (``host_to_config`` makes the
        values plain); a dataclass host's fields by default."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} is not a dataclass Host")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def credentials(
        self, credentials: Credentials | None
    ) -> contextlib.AbstractContextManager[None]:
        """Run a block (and the coroutines and threads it starts) as ``credentials``,
        which come from an orchestrator (an Airflow connection, a Prefect block, a
        Dagster resource). ``None``, and every host that needs none, is a no-op: the
        cloud SDK's own chain decides."""
        return contextlib.nullcontext()

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

    def object_store(self) -> ObjectStore:
        """The host's object store, reachable from the caller and from every machine of
        the host (an IO manager keeps outputs there; tasks reach the same store through
        ``current_task().store``)."""
        raise NotImplementedError(f"{type(self).__name__} offers no object store")

    @abc.abstractmethod
    def object_location(self, key: str) -> str:
        """Where a person finds a stored object (a path or URL)."""


def check_positive_seconds(name: str, value: object) -> None:
    """Refuse a duration that is not a positive finite number (``nan``, ``-5``, text)."""
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value > 0
    ):
        raise InvalidRequestError(f"{name} must be a positive number of seconds, got {value!r}")
