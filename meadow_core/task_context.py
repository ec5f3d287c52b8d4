"""What a running task can learn about itself: ``current_task()``.

Inside a Meadow task (a function in a worker, or a command) this names the job, the
task and the attempt, and opens the host's object store, so task code can keep large
outputs next to Meadow's own payloads (the Dagster IO manager does) without knowing
which host it runs on. Outside a task it returns ``None``.
"""

from __future__ import annotations

import dataclasses
import os

from meadow_core.transport.base import ObjectStore
from meadow_core.transport.urls import open_store

__all__ = ["TaskContext", "current_task", "open_store", "set_current_task"]

#: Environment variables the agent sets for task processes.
JOB_ID_VARIABLE = "MEADOW_JOB_ID"
TASK_ID_VARIABLE = "MEADOW_TASK_ID"
ATTEMPT_VARIABLE = "MEADOW_ATTEMPT"
STORE_VARIABLE = "MEADOW_STORE"
#: Set for an agent whose tasks' store is not its own directory: on an EC2 instance,
#: ``s3://<bucket>?region=<region>``, so outputs outlive the instance and reach the
#: caller and tasks on other instances.
TASK_STORE_VARIABLE = "MEADOW_TASK_STORE"


@dataclasses.dataclass(frozen=True)
class TaskContext:
    job_id: str
    task_id: int
    attempt: int
    store_location: str

    @property
    def store(self) -> ObjectStore:
        """The object store of the place this task runs in (opened by its URL's scheme)."""
        return open_store(self.store_location)


_current: TaskContext | None = None


def set_current_task(context: TaskContext | None) -> None:
    """Called by the worker around each task (one task at a time per worker)."""
    global _current
    _current = context


def current_task() -> TaskContext | None:
    """The task this code runs in, or ``None`` outside Meadow."""
    if _current is not None:
        return _current
    job_id = os.environ.get(JOB_ID_VARIABLE)
    store = os.environ.get(STORE_VARIABLE)
    if job_id is None or store is None:
        return None
    return TaskContext(
        job_id=job_id,
        task_id=int(os.environ.get(TASK_ID_VARIABLE, "0")),
        attempt=int(os.environ.get(ATTEMPT_VARIABLE, "1")),
        store_location=store,
    )
