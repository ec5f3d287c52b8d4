"""Remote errors: ErrorKind and the other protocol enums, RemoteError, and what a
TaskException says about how its task ended (unit tests, then through LocalHost)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import tasks

from meadow_core import (
    ErrorKind,
    InvalidRequestError,
    JobState,
    LocalHost,
    Outcome,
    RemoteError,
    RunMapTasksFailedException,
    TaskException,
    TaskResult,
    protocol,
    run_command_sync,
    run_function_sync,
    run_map_sync,
)
from meadow_core.protocol import TaskOutcome
from meadow_core.results import _rebuild_task_exception

_REPO = Path(__file__).resolve().parents[2]

# -- the enums on the wire ------------------------------------------------------------------


def test_every_kind_string_in_the_code_is_an_error_kind() -> None:
    """A ``"meadow.X"`` literal anywhere in Meadow's code (including the parts still
    spelling kinds out) names a member, so none is a typo."""
    sources = [*(_REPO / "meadow_core").rglob("*.py"), *(_REPO / "integrations").rglob("*.py")]
    found = {
        kind
        for path in sources
        for kind in re.findall(r"[\"'](meadow\.[A-Z]\w+)[\"']", path.read_text())
    }
    assert found <= {str(kind) for kind in ErrorKind}, found - set(ErrorKind)


def test_members_are_their_wire_strings() -> None:
    assert ErrorKind.TASK_LOST == "meadow.TaskLost"
    assert {str(kind) for kind in ErrorKind} == {kind.value for kind in ErrorKind}
    assert all(kind.startswith("meadow.") for kind in ErrorKind)
    assert f"{ErrorKind.WORKER_CRASHED}" == "meadow.WorkerCrashed"
    assert Outcome.CRASHED == "crashed" and JobState.QUEUED == "queued"
    assert {"meadow.TaskTimeout": 1}[ErrorKind.TASK_TIMEOUT] == 1  # same hash


def test_old_constant_names_are_the_members() -> None:
    assert protocol.CRASHED is Outcome.CRASHED
    assert protocol.OUTCOMES == ("succeeded", "failed", "crashed", "timeout", "cancelled")
    assert protocol.JOB_RUNNING is JobState.RUNNING
    assert protocol.TERMINAL_JOB_STATES == ("succeeded", "failed", "cancelled")


def test_outcomes_cross_the_wire_as_plain_strings() -> None:
    outcome = TaskOutcome(
        job_id="j",
        task_id=0,
        attempt=1,
        outcome=Outcome.CRASHED,
        final=True,
        error=[ErrorKind.MEMORY_LIMIT_EXCEEDED, "too big", ""],
    )
    back = TaskOutcome.from_wire(protocol.unpack(protocol.pack(outcome.to_wire())))
    assert type(back.outcome) is str and back.outcome == Outcome.CRASHED
    assert back.error == ["meadow.MemoryLimitExceeded", "too big", ""]
    assert back.remote_error == RemoteError(ErrorKind.MEMORY_LIMIT_EXCEEDED, "too big", "")
    assert back.remote_error is not None
    assert back.remote_error.kind is ErrorKind.MEMORY_LIMIT_EXCEEDED


def test_remote_error_reads_kinds_and_raised_types() -> None:
    lost = RemoteError.from_wire(["meadow.TaskLost", "gone", ""])
    assert lost.kind is ErrorKind.TASK_LOST and lost.message == "gone"
    raised = RemoteError.from_wire(["builtins.ValueError", "bad", "Traceback ..."])
    assert raised == ("builtins.ValueError", "bad", "Traceback ...")
    assert ErrorKind.parse(raised.kind) is None
    assert raised.to_wire() == ["builtins.ValueError", "bad", "Traceback ..."]
    assert RemoteError.from_wire(lost.to_wire()) == lost
    # A kind from a newer Meadow stays readable, as a plain type name.
    assert RemoteError.from_wire(["meadow.SomethingNew", "", ""]).kind == "meadow.SomethingNew"
    assert TaskOutcome("j", 0, 1, Outcome.SUCCEEDED, True).remote_error is None


def test_each_kind_has_the_outcome_meadow_reports_it_with() -> None:
    crashed = {
        ErrorKind.WORKER_CRASHED,
        ErrorKind.MEMORY_LIMIT_EXCEEDED,
        ErrorKind.AGENT_STOPPED,
        ErrorKind.WORKER_START_FAILED,
        ErrorKind.TASK_LOST,
    }
    for kind in ErrorKind:
        if kind in crashed:
            assert kind.outcome is Outcome.CRASHED, kind
        elif kind is ErrorKind.TASK_TIMEOUT:
            assert kind.outcome is Outcome.TIMEOUT
        elif kind is ErrorKind.TASK_CANCELLED:
            assert kind.outcome is Outcome.CANCELLED
        else:
            assert kind.outcome is Outcome.FAILED, kind


# -- TaskException ------------------------------------------------------------------------


def test_task_exception_outcome_and_kind() -> None:
    raised = TaskException("ValueError", "bad", "tb", outcome="failed")
    assert (raised.outcome, raised.kind, raised.is_infrastructure_failure) == (
        Outcome.FAILED,
        None,
        False,
    )
    lost = TaskException("meadow.TaskLost", "gone", "", outcome=Outcome.CRASHED)
    assert lost.kind is ErrorKind.TASK_LOST and lost.is_infrastructure_failure
    timed_out = TaskException("meadow.TaskTimeout", "slow", "", outcome="timeout")
    assert timed_out.is_infrastructure_failure
    cancelled = TaskException("meadow.TaskCancelled", "", "", outcome="cancelled")
    assert not cancelled.is_infrastructure_failure
    unsatisfiable = TaskException("meadow.UnsatisfiableResources", "", "", outcome="failed")
    assert not unsatisfiable.is_infrastructure_failure


def test_task_exception_without_an_outcome_takes_its_kinds() -> None:
    assert TaskException("meadow.WorkerCrashed", "", "").outcome is Outcome.CRASHED
    assert TaskException("meadow.TaskCancelled", "", "").outcome is Outcome.CANCELLED
    assert TaskException("KeyError", "", "").outcome is Outcome.FAILED
    # An outcome this version does not know falls back the same way.
    assert TaskException("meadow.TaskLost", "", "", outcome="vanished").outcome is Outcome.CRASHED


def test_task_exception_pickles_with_its_outcome() -> None:
    exc = TaskException("meadow.TaskLost", "gone", "", task_id=2, attempt=3, job_id="j")
    back = pickle.loads(pickle.dumps(exc))
    assert (back.outcome, back.kind, back.task_id, back.attempt, back.job_id) == (
        Outcome.CRASHED,
        ErrorKind.TASK_LOST,
        2,
        3,
        "j",
    )
    assert back.is_infrastructure_failure
    # What an older version pickled: no outcome.
    old = _rebuild_task_exception("meadow.TaskTimeout", "slow", "", None, 1, "j")
    assert old.outcome is Outcome.TIMEOUT


def test_result_or_raise_keeps_the_outcome() -> None:
    result: TaskResult[int] = TaskResult(
        task_id=4,
        is_success=False,
        result=None,
        exception=("meadow.WorkerCrashed", "died", ""),
        attempt=2,
        outcome=Outcome.CRASHED,
    )
    with pytest.raises(TaskException) as info:
        result.result_or_raise()
    assert info.value.outcome is Outcome.CRASHED and info.value.task_id == 4


# -- through LocalHost ----------------------------------------------------------------------


def test_raised_exception_is_failed(host: LocalHost) -> None:
    with pytest.raises(TaskException) as info:
        run_function_sync(tasks.always_fail, host=host, args=(7,))
    exc = info.value
    assert exc.remote_type == "RuntimeError" and exc.kind is None
    assert exc.outcome is Outcome.FAILED and not exc.is_infrastructure_failure


def test_dead_worker_is_an_infrastructure_failure(host: LocalHost) -> None:
    with pytest.raises(TaskException) as info:
        run_function_sync("os._exit", host=host, args=(3,))
    exc = info.value
    assert exc.kind is ErrorKind.WORKER_CRASHED and exc.outcome is Outcome.CRASHED
    assert exc.is_infrastructure_failure


def test_timeout_is_an_infrastructure_failure(host: LocalHost) -> None:
    with pytest.raises(TaskException) as info:
        run_function_sync(
            tasks.sleep_then_return, host=host, args=(30, "never"), timeout_seconds=0.5
        )
    exc = info.value
    assert exc.kind is ErrorKind.TASK_TIMEOUT and exc.outcome is Outcome.TIMEOUT
    assert exc.is_infrastructure_failure


def test_failed_command_is_not_an_infrastructure_failure(host: LocalHost) -> None:
    with pytest.raises(TaskException) as info:
        run_command_sync(["sh", "-c", "exit 3"], host=host)
    exc = info.value
    assert exc.kind is ErrorKind.COMMAND_FAILED and exc.outcome is Outcome.FAILED
    assert not exc.is_infrastructure_failure


def test_map_failures_raise_with_their_outcome(host: LocalHost) -> None:
    with pytest.raises(RunMapTasksFailedException) as info:
        run_map_sync(tasks.fail_some, [0, 1], host=host)
    (failed,) = info.value.failed_tasks
    with pytest.raises(TaskException) as raised:
        failed.result_or_raise()
    assert raised.value.outcome is Outcome.FAILED and raised.value.task_id == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (None, "run_map needs args"),
        ("abc", "args is a str, which would map over its characters"),
        ({"a": 1}, "args is a mapping"),
        (42, "args must be a sequence of inputs, one per task, got int"),
    ],
)
def test_map_inputs_that_are_surely_mistakes_are_refused(args: object, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        run_map_sync(str, args, LocalHost(home=Path("/nonexistent/never-created")))  # type: ignore[arg-type]


@pytest.mark.parametrize("job_id", ["job\n", "job\nrm -rf", "", "-leading-dash", "a" * 129])
def test_malformed_job_ids_are_refused(job_id: str) -> None:
    with pytest.raises(InvalidRequestError, match="job"):
        run_function_sync(str, LocalHost(home=Path("/nonexistent/never-created")), job_id=job_id)
