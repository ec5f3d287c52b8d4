"""What callers get back: task results, remote exceptions and command completions."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from meadow_core.protocol import ErrorKind, Outcome

_T = TypeVar("_T")

#: Outcomes of a task that did not fail by raising: its worker or machine died under it,
#: it was killed for memory, or it ran out of time.
_INFRASTRUCTURE_OUTCOMES = frozenset({Outcome.CRASHED, Outcome.TIMEOUT})


class TaskState(enum.StrEnum):
    """Meadowrun's names for how a task ended (``TaskResult.state``), kept beside
    Meadow's ``outcome`` so code written for Meadowrun reads the same values.

    ``TIMEOUT`` and ``CANCELLED`` are Meadow's own: Meadowrun had neither.
    """

    SUCCEEDED = "SUCCEEDED"
    #: The task could not be started (no worker for its environment, a command not found).
    RUN_REQUEST_FAILED = "RUN_REQUEST_FAILED"
    #: The task's code raised (or its value could not be pickled on the worker).
    PYTHON_EXCEPTION = "PYTHON_EXCEPTION"
    #: A command, or a function job's process, ended with a non-zero exit.
    NON_ZERO_RETURN_CODE = "NON_ZERO_RETURN_CODE"
    #: The task needs more CPU or memory than any machine offers.
    RESOURCES_NOT_AVAILABLE = "RESOURCES_NOT_AVAILABLE"
    #: The machine could not store or report the task's outcome.
    ERROR_GETTING_STATE = "ERROR_GETTING_STATE"
    #: A map task's worker went away under it: ``sys.exit()``, a crash, out of memory,
    #: or its machine was lost.
    UNEXPECTED_WORKER_EXIT = "UNEXPECTED_WORKER_EXIT"
    #: The task succeeded but its value could not be unpickled by the caller.
    RESULT_CANNOT_BE_UNPICKLED = "RESULT_CANNOT_BE_UNPICKLED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"


_KIND_STATES = {
    ErrorKind.WORKER_CRASHED: TaskState.UNEXPECTED_WORKER_EXIT,
    ErrorKind.MEMORY_LIMIT_EXCEEDED: TaskState.UNEXPECTED_WORKER_EXIT,
    ErrorKind.AGENT_STOPPED: TaskState.UNEXPECTED_WORKER_EXIT,
    ErrorKind.TASK_LOST: TaskState.UNEXPECTED_WORKER_EXIT,
    ErrorKind.WORKER_START_FAILED: TaskState.RUN_REQUEST_FAILED,
    ErrorKind.TASK_NOT_DELIVERED: TaskState.RUN_REQUEST_FAILED,
    ErrorKind.COMMAND_NOT_STARTED: TaskState.RUN_REQUEST_FAILED,
    ErrorKind.COMMAND_FAILED: TaskState.NON_ZERO_RETURN_CODE,
    ErrorKind.TASK_TIMEOUT: TaskState.TIMEOUT,
    ErrorKind.TASK_CANCELLED: TaskState.CANCELLED,
    ErrorKind.UNSATISFIABLE_RESOURCES: TaskState.RESOURCES_NOT_AVAILABLE,
    ErrorKind.RESULT_NOT_PICKLABLE: TaskState.PYTHON_EXCEPTION,
    ErrorKind.RESULT_NOT_UNPICKLABLE: TaskState.RESULT_CANNOT_BE_UNPICKLED,
    ErrorKind.AGENT_ERROR: TaskState.ERROR_GETTING_STATE,
    ErrorKind.UNKNOWN: TaskState.ERROR_GETTING_STATE,
}
_OUTCOME_STATES: dict[str, TaskState] = {
    Outcome.SUCCEEDED: TaskState.SUCCEEDED,
    Outcome.CRASHED: TaskState.UNEXPECTED_WORKER_EXIT,
    Outcome.TIMEOUT: TaskState.TIMEOUT,
    Outcome.CANCELLED: TaskState.CANCELLED,
}
_STATE_OUTCOMES: dict[str, Outcome] = {
    TaskState.SUCCEEDED: Outcome.SUCCEEDED,
    TaskState.UNEXPECTED_WORKER_EXIT: Outcome.CRASHED,
    TaskState.TIMEOUT: Outcome.TIMEOUT,
    TaskState.CANCELLED: Outcome.CANCELLED,
}


def task_state(outcome: str, remote_type: str | None, *, single: bool = False) -> TaskState:
    """Meadowrun's state for a task that ended with ``outcome`` and, if it failed, the
    error type ``remote_type``.

    ``sys.exit()`` in a task is an unexpected worker exit, as on Meadowrun (whose
    worker process ended with it), although Meadow's warm worker survives it. For a
    single function job (``single``) such an exit is ``NON_ZERO_RETURN_CODE``, the
    state Meadowrun gave the process it ran that function in.
    """
    if outcome == Outcome.SUCCEEDED:
        return TaskState.SUCCEEDED
    kind = ErrorKind.parse(remote_type) if remote_type else None
    if kind is not None:
        state = _KIND_STATES.get(kind, TaskState.PYTHON_EXCEPTION)
    elif remote_type == "SystemExit":
        state = TaskState.UNEXPECTED_WORKER_EXIT
    elif remote_type:
        state = TaskState.PYTHON_EXCEPTION
    else:
        state = _OUTCOME_STATES.get(outcome, TaskState.PYTHON_EXCEPTION)
    if single and state is TaskState.UNEXPECTED_WORKER_EXIT:
        return TaskState.NON_ZERO_RETURN_CODE
    return state


class TaskException(Exception):
    """A task that failed: its code raised, or it crashed, timed out or was cancelled.

    ``remote_type`` is the qualified type name of the exception the code raised
    (``"ValueError"``), or for a failure around the code the ``ErrorKind`` Meadow
    reports (``"meadow.WorkerCrashed"``, ``"meadow.TaskTimeout"``, ...); ``kind`` is
    that ``ErrorKind``, ``None`` when the code raised. ``remote_message`` is the
    message, ``remote_traceback`` the formatted remote traceback. ``outcome`` is the
    task's ``Outcome``: ``failed`` (the code raised, or the task could not be run as
    asked), ``crashed``, ``timeout`` or ``cancelled``; ``state`` is the same in
    Meadowrun's words (a ``TaskState``, e.g. ``"PYTHON_EXCEPTION"``).
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
        state: str | None = None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.task_id = task_id
        self.attempt = attempt
        self.job_id = job_id
        self.kind = ErrorKind.parse(remote_type)
        self.outcome = _outcome(outcome, self.kind)
        self.state = state or task_state(self.outcome, remote_type)
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
                str(self.state),
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
    state: str | None = None,
) -> TaskException:
    return TaskException(
        remote_type,
        message,
        tb,
        task_id=task_id,
        attempt=attempt,
        job_id=job_id,
        outcome=outcome,
        state=state,
    )


@dataclasses.dataclass(init=False)
class TaskResult(Generic[_T]):
    """The outcome of one task of a map (or of a single function job).

    ``exception`` is ``(type, message, traceback)`` of the final failure, ``attempt`` is
    1-based, ``outcome`` one of ``succeeded``, ``failed`` (the code raised), ``crashed``
    (the worker died, e.g. out of memory), ``timeout`` or ``cancelled``; ``log_location``
    names where the task's full log is kept (see ``read_task_log``).

    ``state`` says the same in Meadowrun's words (a ``TaskState``: ``"SUCCEEDED"``,
    ``"PYTHON_EXCEPTION"``, ``"UNEXPECTED_WORKER_EXIT"``, ...), so code written for
    Meadowrun works; Meadowrun's ``TaskResult(task_id, is_success, state=...,
    result=..., exception=..., attempt=..., log_file_name=...)`` keywords are accepted.
    Whichever of ``outcome`` and ``state`` is not given is derived from the other.
    """

    task_id: int
    is_success: bool
    result: _T | None
    exception: tuple[str, str, str] | None
    attempt: int
    outcome: str
    log_location: str | None
    job_id: str | None
    max_memory_used_gb: float | None
    state: str

    def __init__(
        self,
        task_id: int,
        is_success: bool,
        result: _T | None = None,
        exception: tuple[str, str, str] | None = None,
        attempt: int = 1,
        outcome: str | None = None,
        log_location: str | None = None,
        job_id: str | None = None,
        max_memory_used_gb: float | None = None,
        *,
        state: str | None = None,
        log_file_name: str | None = None,
    ) -> None:
        if log_file_name is not None and log_location is not None:
            raise TypeError("give log_location or Meadowrun's log_file_name, not both")
        self.task_id = task_id
        self.is_success = is_success
        self.result = result
        self.exception = exception
        self.attempt = attempt
        remote_type = exception[0] if exception else None
        if outcome is None:
            if is_success:
                outcome = Outcome.SUCCEEDED
            elif state is not None and state in _STATE_OUTCOMES:
                outcome = _STATE_OUTCOMES[state]
            else:
                kind = ErrorKind.parse(remote_type) if remote_type else None
                outcome = kind.outcome if kind is not None else Outcome.FAILED
        self.outcome = outcome
        self.state = state or task_state(outcome, remote_type)
        self.log_location = log_location if log_file_name is None else log_file_name or None
        self.job_id = job_id
        self.max_memory_used_gb = max_memory_used_gb

    @property
    def log_file_name(self) -> str:
        """Meadowrun's name for where the task's log is: ``log_location``, or ``""``."""
        return self.log_location or ""

    def result_or_raise(self) -> _T:
        """The task's return value, or raise its ``TaskException``."""
        if self.is_success:
            return self.result  # type: ignore[return-value]
        exception = self.exception or (
            ErrorKind.UNKNOWN,
            f"the task was not successful, state: {self.state}",
            "",
        )
        raise TaskException(
            *exception,
            task_id=self.task_id,
            attempt=self.attempt,
            job_id=self.job_id,
            outcome=self.outcome,
            state=self.state,
        )


class RunMapTasksFailedException(Exception):
    """Raised by ``run_map`` when one or more tasks failed after all their attempts.

    ``failed_tasks`` lists every failed ``TaskResult`` (by task id) and the message names
    each one's final ``state``; ``failed_task_args`` holds the argument of each, in the
    same order (as on Meadowrun; ``None`` if they could not be read back); ``results``
    holds the value of each task in input order, ``None`` where the task failed, so
    nothing that succeeded is lost.
    """

    def __init__(
        self,
        failed_tasks: Sequence[TaskResult[Any]],
        results: list[Any],
        failed_task_args: Sequence[Any] | None = None,
    ) -> None:
        self.failed_tasks = list(failed_tasks)
        self.results = results
        self.failed_task_args = list(failed_task_args) if failed_task_args is not None else None
        args: Sequence[Any] = self.failed_task_args or ()
        lines = []
        for index, t in enumerate(self.failed_tasks[:20]):
            arg = f" with arg ({_short_repr(args[index])})" if index < len(args) else ""
            error = f"{t.exception[0]}: {t.exception[1]}" if t.exception else "?"
            lines.append(
                f"  task {t.task_id}{arg} (attempt {t.attempt}, {t.outcome}, "
                f"final state: {t.state}): {error}"
            )
        more = len(self.failed_tasks) - len(lines)
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__(
            f"{len(self.failed_tasks)} of {len(results)} tasks failed:\n" + "\n".join(lines)
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            RunMapTasksFailedException,
            (self.failed_tasks, self.results, self.failed_task_args),
        )


def _short_repr(value: object, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
