"""Which Prefect state a failed Meadow task becomes: ``_state_for`` directly for every
way a task can fail, then a timeout through a flow."""

from __future__ import annotations

import time

import pytest
from meadow_prefect import MeadowTaskRunner
from meadow_prefect.task_runner import _state_for
from prefect import flow, task
from prefect.states import State

from meadow_core import ErrorKind, LocalHost, Outcome, TaskException


def _failure(kind: str, outcome: Outcome) -> TaskException:
    return TaskException(kind, "what happened", "", attempt=1, job_id="job-1", outcome=outcome)


@pytest.mark.parametrize(
    "kind",
    [
        ErrorKind.WORKER_CRASHED,
        ErrorKind.MEMORY_LIMIT_EXCEEDED,
        ErrorKind.AGENT_STOPPED,
        ErrorKind.WORKER_START_FAILED,
        ErrorKind.TASK_LOST,  # five deliveries died with their instances
    ],
)
def test_a_task_whose_worker_or_machine_died_is_crashed(kind: ErrorKind) -> None:
    state = _state_for(_failure(kind, Outcome.CRASHED))
    assert state.is_crashed(), state
    assert kind in (state.message or "")


def test_a_cancelled_job_is_cancelled() -> None:
    state = _state_for(_failure(ErrorKind.TASK_CANCELLED, Outcome.CANCELLED))
    assert state.is_cancelled(), state


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [
        ("builtins.ValueError", Outcome.FAILED),
        (ErrorKind.TASK_TIMEOUT, Outcome.TIMEOUT),
        (ErrorKind.UNSATISFIABLE_RESOURCES, Outcome.FAILED),
        (ErrorKind.RESULT_NOT_PICKLABLE, Outcome.FAILED),
    ],
)
def test_other_failures_are_raised_for_prefect_to_fail_and_retry(
    kind: str, outcome: Outcome
) -> None:
    exc = _failure(kind, outcome)
    with pytest.raises(TaskException) as info:
        _state_for(exc)
    assert info.value is exc


def test_a_timed_out_task_run_fails(host: LocalHost) -> None:
    @task
    def slow() -> None:
        time.sleep(60)

    @flow(task_runner=MeadowTaskRunner(host=host, timeout_seconds=1))
    def timing_out() -> State[None]:
        future = slow.submit()
        future.wait()
        return future.state

    task_state = timing_out(return_state=True).result(raise_on_failure=False)
    assert task_state.is_failed(), task_state
    assert "meadow.TaskTimeout" in (task_state.message or "")
