"""What callers get back: task results, remote exceptions and command completions."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Generic, TypeVar

from meadow_core.protocol import ErrorKind, Outcome

_T = TypeVar("_T")

#: Outcomes of a task that did not fail by raising: its worker or machine died under it,
#: it was killed for memory, or it ran out of time.
_INFRASTRUCTURE_OUTCOMES = frozenset({Outcome.CRASHED, Outcome.TIMEOUT})


class TaskException(Exception):
    """A task that failed: its code raised, or it crashed, timed out or was cancelled.

    ``remote_type`` is the qualified type name of the exception the code raised
    (``"ValueError"``), or for a failure around the code the ``ErrorKind`` Meadow
    reports (``"meadow.WorkerCrashed"``, ``"meadow.TaskTimeout"``, ...); ``kind`` is
    that ``ErrorKind``, ``None`` when the code raised. ``remote_message`` is the
    message, ``remote_traceback`` the formatted remote traceback. ``outcome`` is the
    task's ``Outcome``: ``failed`` (the code raised, or the task could not be run as
    asked), ``crashed``, ``timeout`` or ``cancelled``.
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
        outcome: str | None = None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.task_id = task_id
        self.attempt = attempt
        self.job_id = job_id
        self.kind = ErrorKind.parse(remote_type)
        self.outcome = _outcome(outcome, self.kind)
        where = ""
        if task_id is not None:
            where = f" in task {task_id}" + (f", attempt {attempt}" if attempt else "")
        super().__init__(
            f"{remote_type}: {remote_message}{where}\n--- remote traceback ---\n"
            f"{remote_traceback.rstrip()}"
        )

    @property
    def is_infrastructure_failure(self) -> bool:
        """The task did not fail by raising: its worker crashed, it was killed for
        memory, it was lost with its machine, it timed out, its agent stopped.

        False for an exception the code raised, a cancelled job, and a task that could
        not be run as asked (a command not found, resources no machine has).
        """
        return self.outcome in _INFRASTRUCTURE_OUTCOMES

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
                str(self.outcome),
            ),
        )


def _outcome(outcome: str | None, kind: ErrorKind | None) -> Outcome:
    """``outcome`` as an ``Outcome``; when not given (or not known here), the one Meadow
    reports ``kind`` with."""
    if outcome is not None:
        try:
            return Outcome(outcome)
        except ValueError:
            pass
    return kind.outcome if kind is not None else Outcome.FAILED


def _rebuild_task_exception(
    remote_type: str,
    message: str,
    tb: str,
    task_id: int | None,
    attempt: int | None,
    job_id: str | None,
    outcome: str | None = None,  # absent from exceptions pickled by older versions
) -> TaskException:
    return TaskException(
        remote_type,
        message,
        tb,
        task_id=task_id,
        attempt=attempt,
        job_id=job_id,
        outcome=outcome,
    )


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
    outcome: str = Outcome.SUCCEEDED
    log_location: str | None = None
    job_id: str | None = None
    max_memory_used_gb: float | None = None

    def result_or_raise(self) -> _T:
        """The task's return value, or raise its ``TaskException``."""
        if self.is_success:
            return self.result  # type: ignore[return-value]
        assert self.exception is not None
        raise TaskException(
            *self.exception,
            task_id=self.task_id,
            attempt=self.attempt,
            job_id=self.job_id,
            outcome=self.outcome,
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
    outcome: str = Outcome.SUCCEEDED
