"""The protocol between caller, agent and workers: versioned plain data.

Everything that crosses a process or machine boundary is one of these records, turned
into a msgpack map by ``to_wire`` (with ``"v": PROTOCOL_VERSION``). Pickled user data
(functions, arguments, results) travels only as opaque ``bytes`` inside them or as
objects in the place's store, named by content hash. See ARCHITECTURE.md, "Protocol".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct
import time
from typing import Any

import msgpack

PROTOCOL_VERSION = 1

#: Results up to this size travel inline in the result record; larger ones are stored
#: as objects and referenced, so queue messages stay small.
INLINE_LIMIT = 64 * 1024

# Outcomes of one task attempt.
SUCCEEDED = "succeeded"
FAILED = "failed"  # the user's code raised
CRASHED = "crashed"  # the worker died: signal, out of memory, lost machine
TIMEOUT = "timeout"
CANCELLED = "cancelled"
OUTCOMES = (SUCCEEDED, FAILED, CRASHED, TIMEOUT, CANCELLED)

# Job states.
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"
JOB_CANCELLED = "cancelled"
TERMINAL_JOB_STATES = (JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED)


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
    ``[type, message, traceback]``.
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
