"""The protocol between caller, agent and workers: versioned plain data.

Everything that crosses a process or machine boundary is one of these records, turned
into a msgpack map by ``to_wire`` (with ``"v": PROTOCOL_VERSION``). Pickled user data
(functions, arguments, results) travels only as opaque ``bytes`` inside them or as
objects in the place's store, named by content hash. See ARCHITECTURE.md, "Protocol".
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import struct
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

PROTOCOL_VERSION = 1

#: Results up to this size travel inline in the result record; larger ones are stored
#: as objects and referenced, so queue messages stay small.
INLINE_LIMIT = 64 * 1024


class Outcome(enum.StrEnum):
    """How one task attempt ended (``TaskOutcome.outcome``; on the wire, the value)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the user's code raised, or the task could not be run as asked
    CRASHED = "crashed"  # the worker died: signal, out of memory, lost machine
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class JobState(enum.StrEnum):
    """Where a job is (``JobRecord.state``; on the wire, the value)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The names these had before the enums; members compare equal to their strings.
SUCCEEDED = Outcome.SUCCEEDED
FAILED = Outcome.FAILED
CRASHED = Outcome.CRASHED
TIMEOUT = Outcome.TIMEOUT
CANCELLED = Outcome.CANCELLED
OUTCOMES = tuple(Outcome)
JOB_QUEUED = JobState.QUEUED
JOB_RUNNING = JobState.RUNNING
JOB_SUCCEEDED = JobState.SUCCEEDED
JOB_FAILED = JobState.FAILED
JOB_CANCELLED = JobState.CANCELLED
TERMINAL_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ErrorKind(enum.StrEnum):
    """The failures Meadow itself reports, as the type in a task's ``[type, message, traceback]``.

    A task whose code raised carries the exception's own type name (``"ValueError"``);
    these kinds say the failure happened around the code. The values are the wire format.
    """

    #: The worker running the task died (a signal, ``os._exit``, a segfault).
    WORKER_CRASHED = "meadow.WorkerCrashed"
    #: The task used more memory than its ``Resources.memory_gb`` and was killed.
    MEMORY_LIMIT_EXCEEDED = "meadow.MemoryLimitExceeded"
    #: The agent stopped while the task ran.
    AGENT_STOPPED = "meadow.AgentStopped"
    #: No worker could be started for the task's environment.
    WORKER_START_FAILED = "meadow.WorkerStartFailed"
    #: The task was delivered again and again and never finished: each machine running
    #: it stopped (out of memory, killed, interrupted).
    TASK_LOST = "meadow.TaskLost"
    #: The task ran longer than its ``timeout_seconds`` and was killed.
    TASK_TIMEOUT = "meadow.TaskTimeout"
    #: The job was cancelled before or while the task ran.
    TASK_CANCELLED = "meadow.TaskCancelled"
    #: The task needs more CPU or memory than the machine has (e.g. a memory-multiplied retry).
    UNSATISFIABLE_RESOURCES = "meadow.UnsatisfiableResources"
    #: The task's payload could not be handed to a worker (e.g. missing from the store).
    TASK_NOT_DELIVERED = "meadow.TaskNotDelivered"
    #: The command could not be started (not found, not executable).
    COMMAND_NOT_STARTED = "meadow.CommandNotStarted"
    #: The command exited non-zero or was killed by a signal.
    COMMAND_FAILED = "meadow.CommandFailed"
    #: The task returned a value that could not be pickled on the worker.
    RESULT_NOT_PICKLABLE = "meadow.ResultNotPicklable"
    #: The task succeeded but the caller could not unpickle its value.
    RESULT_NOT_UNPICKLABLE = "meadow.ResultNotUnpicklable"
    #: The agent failed around the task (a full disk, a read-only store, a damaged
    #: queue): the message names the cause and the path.
    AGENT_ERROR = "meadow.AgentError"
    #: A failed task whose record carries no error (should not happen).
    UNKNOWN = "meadow.Unknown"

    @classmethod
    def parse(cls, remote_type: str) -> ErrorKind | None:
        """The kind ``remote_type`` names, or ``None`` for the type of an exception the
        code raised (or a kind this version does not know)."""
        try:
            return cls(remote_type)
        except ValueError:
            return None

    @property
    def outcome(self) -> Outcome:
        """The outcome Meadow reports a failure of this kind with."""
        return _KIND_OUTCOMES.get(self, Outcome.FAILED)


_KIND_OUTCOMES = {
    ErrorKind.WORKER_CRASHED: Outcome.CRASHED,
    ErrorKind.MEMORY_LIMIT_EXCEEDED: Outcome.CRASHED,
    ErrorKind.AGENT_STOPPED: Outcome.CRASHED,
    ErrorKind.WORKER_START_FAILED: Outcome.CRASHED,
    ErrorKind.TASK_LOST: Outcome.CRASHED,
    ErrorKind.TASK_TIMEOUT: Outcome.TIMEOUT,
    ErrorKind.TASK_CANCELLED: Outcome.CANCELLED,
}


class RemoteError(NamedTuple):
    """Why a task attempt failed: ``TaskOutcome.error`` (a ``[kind, message, traceback]``
    list on the wire) as a typed tuple.

    ``kind`` is an ``ErrorKind`` for a failure around the code, else the qualified type
    name of the exception the code raised.
    """

    kind: str
    message: str
    traceback: str

    @classmethod
    def from_wire(cls, error: Sequence[str]) -> RemoteError:
        kind, message, traceback = error
        return cls(ErrorKind.parse(kind) or kind, message, traceback)

    def to_wire(self) -> list[str]:
        return [str(self.kind), self.message, self.traceback]


class ProtocolError(Exception):
    """A message from a newer or broken peer."""


def shallow_fields(record: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, without ``dataclasses.asdict``'s deep copy (hot path)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def content_key(data: bytes, prefix: str) -> str:
    """Content address of ``data``: uploads of equal bytes collapse into one object."""
    return f"{prefix}/{hashlib.sha256(data).hexdigest()}"


def pack(message: dict[str, Any]) -> bytes:
    message.setdefault("v", PROTOCOL_VERSION)
    return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> dict[str, Any]:
    message = msgpack.unpackb(data, raw=False)
    if not isinstance(message, dict):
        raise ProtocolError("a Meadow message must be a map")
    version = message.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not {PROTOCOL_VERSION}: the caller and the agent "
            "run different Meadow versions; upgrade the older one"
        )
    return message


_FRAME = struct.Struct("!I")


def frame(message: dict[str, Any]) -> bytes:
    """A length-prefixed frame for stream transports (sockets, pipes)."""
    body = pack(message)
    return _FRAME.pack(len(body)) + body


def frame_header_size() -> int:
    return _FRAME.size


def frame_length(header: bytes) -> int:
    return int(_FRAME.unpack(header)[0])


@dataclasses.dataclass
class Environment:
    """Where and how a task runs: interpreter, import path, working directory, env vars.

    Workers are pooled per environment key, so two jobs with equal environments share
    warm workers.
    """

    interpreter: str
    sys_path: list[str]
    working_directory: str
    environment_variables: dict[str, str] = dataclasses.field(default_factory=dict)
    #: A code snapshot (``code_snapshot``) the agent materializes and puts first on
    #: sys.path, running in its working directory; ``None`` runs the caller's own paths.
    code_manifest: str | None = None
    #: An ``EnvironmentSpec`` object the agent builds or fetches (``envcache``); its
    #: interpreter replaces ``interpreter``. ``None`` runs ``interpreter`` as it is.
    env_spec: str | None = None
    #: A pinned image (``repo@sha256:...``, or a local image id) the task runs in, with
    #: Meadow's worker runtime mounted; ``None`` runs on the machine itself.
    container_image: str | None = None

    @functools.cached_property
    def key(self) -> str:
        return content_key(pack(self.to_wire() | {"v": PROTOCOL_VERSION}), "env")

    def to_wire(self) -> dict[str, Any]:
        data = shallow_fields(self)
        for optional in ("code_manifest", "env_spec", "container_image"):
            if data[optional] is None:
                del data[optional]  # what agents before these fields understand
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Environment:
        return cls(**data)


@dataclasses.dataclass
class JobSpec:
    """One job: a function call, a command, or a map of a function over arguments.

    ``function_key`` names the pickled function in the store (or ``function_name`` a
    ``module.function`` to import on the worker); ``args_key`` names one blob holding
    every task's pickled arguments back to back, read by byte range.
    """

    job_id: str
    kind: str  # "function" | "command" | "map"
    name: str
    environment: Environment
    resources: dict[str, Any]
    num_tasks: int
    function_key: str | None = None
    function_name: str | None = None
    args_key: str | None = None
    command: list[str] | None = None
    max_attempts: int = 1
    retry_with_more_memory: bool = False
    timeout_seconds: float | None = None
    num_concurrent_tasks: int | None = None
    created: float = dataclasses.field(default_factory=time.time)

    def to_wire(self) -> dict[str, Any]:
        data = shallow_fields(self)
        data["environment"] = self.environment.to_wire()
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        data.pop("v", None)
        data["environment"] = Environment.from_wire(data["environment"])
        return cls(**data)


@dataclasses.dataclass
class TaskMessage:
    """One queued task attempt: small, so a 10,000-task map is 10,000 tiny messages.

    Arguments are either inline (a single call) or a byte range of the job's args blob.
    ``memory_gb`` overrides the job's memory for this attempt (retry_with_more_memory).
    """

    job_id: str
    task_id: int
    attempt: int = 1
    args_inline: bytes | None = None
    args_range: tuple[int, int] | None = None
    memory_gb: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return shallow_fields(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TaskMessage:
        data = dict(data)
        data.pop("v", None)
        if data.get("args_range") is not None:
            data["args_range"] = tuple(data["args_range"])
        return cls(**data)


@dataclasses.dataclass
class TaskOutcome:
    """The stored result of one task attempt.

    ``final`` is false for an attempt that will be retried. ``value`` holds a small
    pickled result inline, ``value_key`` names a large one in the store. ``error`` is
    ``[type, message, traceback]`` (``remote_error`` reads it as a ``RemoteError``).
    """

    job_id: str
    task_id: int
    attempt: int
    outcome: str
    final: bool
    value: bytes | None = None
    value_key: str | None = None
    error: list[str] | None = None
    return_code: int | None = None
    max_memory_gb: float | None = None
    log_key: str | None = None
    started: float | None = None
    finished: float = dataclasses.field(default_factory=time.time)

    @property
    def remote_error(self) -> RemoteError | None:
        return RemoteError.from_wire(self.error) if self.error else None

    def to_wire(self) -> dict[str, Any]:
        return shallow_fields(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TaskOutcome:
        data = dict(data)
        data.pop("v", None)
        data.pop("op", None)
        return cls(**data)


@dataclasses.dataclass
class JobRecord:
    """A job as the host's registry knows it (what ``meadow jobs`` lists)."""

    job_id: str
    kind: str
    name: str
    state: str
    num_tasks: int
    num_done: int
    num_failed: int
    created: float
    finished: float | None

    def to_wire(self) -> dict[str, Any]:
        return shallow_fields(self)
