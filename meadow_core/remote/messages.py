"""The queues of a remote job and the messages on them.

Per job: a work queue holding its task messages (every machine serving the job pulls
from it, so tasks balance by themselves and a dead machine's task reappears after the
visibility timeout) and a result queue the caller long-polls (announcements of stored
outcomes, and live log lines). Per machine: a control queue on which callers say
"serve job J" or "cancel J". Bodies are the same msgpack records the local transport
uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meadow_core import protocol
from meadow_core.protocol import TaskMessage, TaskOutcome
from meadow_core.remote.ports import QueueName

#: How long a received task stays hidden; the machine extends it while the task runs.
TASK_VISIBILITY_SECONDS = 30
#: How often a running task's visibility is extended.
VISIBILITY_HEARTBEAT_SECONDS = 10


def job_queue(job_id: str) -> QueueName:
    return QueueName("job", job_id)


def result_queue(job_id: str) -> QueueName:
    return QueueName("result", job_id)


def control_queue(machine_id: str) -> QueueName:
    return QueueName("control", machine_id)


def encode(message: dict[str, Any]) -> bytes:
    return protocol.pack(message)


def decode(body: bytes) -> dict[str, Any]:
    return protocol.unpack(body)


def task_body(task: TaskMessage) -> bytes:
    return encode({"op": "task", **task.to_wire()})


def outcome_body(outcome: TaskOutcome) -> bytes:
    return encode({"op": "result", **outcome.to_wire()})


def log_body(task_id: int, attempt: int, lines: Sequence[str]) -> bytes:
    return encode({"op": "log", "task_id": task_id, "attempt": attempt, "lines": list(lines)})


def serve_body(job_id: str, workers: int) -> bytes:
    return encode({"op": "serve", "job_id": job_id, "workers": workers})


def cancel_body(job_id: str) -> bytes:
    return encode({"op": "cancel", "job_id": job_id})
