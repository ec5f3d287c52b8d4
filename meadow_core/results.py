"""What callers get back: task results, remote exceptions and command completions."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Generic, TypeVar

_T = TypeVar("_T")


class TaskException(Exception):
    """An exception raised on the remote side, or a task that crashed or timed out.

    ``remote_type`` is the remote exception's qualified type name (``"ValueError"``, or
    ``"WorkerCrashed"``/``"TaskTimeout"``/``"TaskCancelled"`` for failures around the
    code), ``remote_message`` its message and ``remote_traceback`` the formatted remote
    traceback.
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
        *,
        task_id: int | None = None,
        attempt: int | None = None,
        job_id: str | None = None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.task_id = task_id
        self.attempt = attempt
        self.job_id = job_id
        where = ""
        if task_id is not None:
            where = f" in task {task_id}" + (f", attempt {attempt}" if attempt else "")
        super().__init__(
            f"{remote_type}: {remote_message}{where}\n--- remote traceback ---\n"
            f"{remote_traceback.rstrip()}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_task_exception,
            (
                self.remote_type,
                self.remote_message,
                self.remote_traceback,
                self.task_id,
                self.attempt,
                self.job_id,
            ),
        )


def _rebuild_task_exception(
    remote_type: str,
    message: str,
    tb: str,
    task_id: int | None,
    attempt: int | None,
    job_id: str | None,
) -> TaskException:
    return TaskException(remote_type, message, tb, task_id=task_id, attempt=attempt, job_id=job_id)


@dataclasses.dataclass
class TaskResult(Generic[_T]):
    """The outcome of one task of a map (or of a single function job).

    ``exception`` is ``(type, message, traceback)`` of the final failure, ``attempt`` is
    1-based, ``outcome`` one of ``succeeded``, ``failed`` (the code raised), ``crashed``
    (the worker died, e.g. out of memory), ``timeout`` or ``cancelled``; ``log_location``
    names where the task's full log is kept (see ``read_task_log``).
    """

    task_id: int
    is_success: bool
    result: _T | None
    exception: tuple[str, str, str] | None
    attempt: int
    outcome: str = "succeeded"
    log_location: str | None = None
    job_id: str | None = None
    max_memory_used_gb: float | None = None

    def result_or_raise(self) -> _T:
        """The task's return value, or raise its ``TaskException``."""
        if self.is_success:
            return self.result  # type: ignore[return-value]
        assert self.exception is not None
        raise TaskException(
            *self.exception, task_id=self.task_id, attempt=self.attempt, job_id=self.job_id
        )


class RunMapTasksFailedException(Exception):
    """Raised by ``run_map`` when one or more tasks failed after all their attempts.

    ``failed_tasks`` lists every failed ``TaskResult``; ``results`` holds the value of
    each task in input order, ``None`` where the task failed, so nothing that succeeded
    is lost.
    """

    def __init__(self, failed_tasks: Sequence[TaskResult[object]], results: list[object]) -> None:
        self.failed_tasks = list(failed_tasks)
        self.results = results
        lines = [
            f"  task {t.task_id} (attempt {t.attempt}, {t.outcome}): "
            f"{t.exception[0] if t.exception else '?'}: {t.exception[1] if t.exception else ''}"
            for t in self.failed_tasks[:20]
        ]
        more = len(self.failed_tasks) - len(lines)
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__(
            f"{len(self.failed_tasks)} of {len(results)} tasks failed:\n" + "\n".join(lines)
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (RunMapTasksFailedException, (self.failed_tasks, self.results))


@dataclasses.dataclass
class JobCompletion(Generic[_T]):
    """How a ``run_command`` (or a function job) ended.

    ``return_code`` is the command's exit code; ``log`` is its combined output.
    """

    job_id: str
    return_code: int
    log: str
    log_location: str | None
    result: _T | None = None
    outcome: str = "succeeded"
