"""Meadowrun's task states (``TaskResult.state``) and ``RunMapTasksFailedException``
fields, beside Meadow's ``outcome``: what Meadowrun's ``EdgeCasesSuite`` and
``MapRetriesSuite`` check."""

from __future__ import annotations

import asyncio
import pickle
import sys

import pytest
from compat_repo import GitRepo

import meadow_core
from meadow_core import (
    Deployment,
    LocalHost,
    Outcome,
    RunMapTasksFailedException,
    TaskException,
    TaskResult,
    run_function,
    run_map,
    run_map_as_completed,
    run_map_sync,
)

PREINSTALLED = Deployment.preinstalled_interpreter("MEADOW_INTERPRETER")


def test_task_result_takes_meadowruns_keywords() -> None:
    done: TaskResult[int] = TaskResult(3, is_success=True, state="SUCCEEDED", result=5)
    assert (done.result_or_raise(), done.attempt, done.log_file_name) == (5, 1, "")
    assert done.outcome == Outcome.SUCCEEDED
    failed: TaskResult[int] = TaskResult(
        4,
        False,
        state="PYTHON_EXCEPTION",
        exception=("ValueError", "bad", "Traceback ..."),
        attempt=2,
        log_file_name="/logs/4.log",
    )
    assert failed.outcome == Outcome.FAILED and failed.log_location == "/logs/4.log"
    with pytest.raises(TaskException) as info:
        failed.result_or_raise()
    assert info.value.state == "PYTHON_EXCEPTION" and info.value.task_id == 4
    # Meadow's own keywords give Meadowrun's state too.
    crashed: TaskResult[int] = TaskResult(
        5, False, None, ("meadow.WorkerCrashed", "died", ""), 1, Outcome.CRASHED
    )
    assert crashed.state == "UNEXPECTED_WORKER_EXIT"
    assert meadow_core.TaskState.UNEXPECTED_WORKER_EXIT == "UNEXPECTED_WORKER_EXIT"
    with pytest.raises(TaskException, match="state: RESULT_CANNOT_BE_UNPICKLED"):
        TaskResult(6, False, state="RESULT_CANNOT_BE_UNPICKLED").result_or_raise()


def test_states_of_a_map_that_partly_fails(host: LocalHost) -> None:
    def maybe_fail(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    async def main() -> dict[int, TaskResult[int]]:
        return {r.task_id: r async for r in await run_map_as_completed(maybe_fail, [1, 2], host)}

    results = asyncio.run(main())
    assert (results[0].state, results[0].outcome) == ("SUCCEEDED", Outcome.SUCCEEDED)
    assert (results[1].state, results[1].outcome) == ("PYTHON_EXCEPTION", Outcome.FAILED)


def test_run_map_failure_names_final_states_and_failed_args(host: LocalHost) -> None:
    def odd_fails(x: int) -> int:
        if x % 2:
            raise RuntimeError(f"odd {x}")
        return x

    with pytest.raises(RunMapTasksFailedException) as info:
        asyncio.run(run_map(odd_fails, [10, 11, 12, 13], host))
    exc = info.value
    assert [t.task_id for t in exc.failed_tasks] == [1, 3]
    assert exc.failed_task_args == [11, 13]
    assert all(t.state == "PYTHON_EXCEPTION" for t in exc.failed_tasks)
    assert "final state: PYTHON_EXCEPTION" in str(exc) and "with arg (13)" in str(exc)
    assert exc.results == [10, None, 12, None]  # Meadow's addition stays
    back = pickle.loads(pickle.dumps(exc))
    assert back.failed_task_args == [11, 13]


def test_sys_exit_in_run_map_as_completed_is_an_unexpected_worker_exit(host: LocalHost) -> None:
    def unexpected_exit(_: int) -> None:
        sys.exit(123)

    async def main() -> list[TaskResult[None]]:
        return [
            r
            async for r in await run_map_as_completed(
                unexpected_exit,
                [1, 2],
                host,
                deployment=PREINSTALLED,
                num_concurrent_tasks=2,
                max_num_task_attempts=3,
            )
        ]

    actual = asyncio.run(main())
    assert len(actual) == 2
    for result in actual:
        assert not result.is_success
        assert result.exception is not None
        assert result.attempt == 3
        assert result.state == "UNEXPECTED_WORKER_EXIT"


def test_sys_exit_in_run_map_is_an_unexpected_worker_exit(host: LocalHost) -> None:
    def unexpected_exit(x: int) -> None:
        sys.exit(123)

    with pytest.raises(RunMapTasksFailedException) as exc:
        asyncio.run(run_map(unexpected_exit, [1, 2, 3, 4], host, deployment=PREINSTALLED))
    assert "UNEXPECTED_WORKER_EXIT" in str(exc.value)
    assert exc.value.failed_task_args == [1, 2, 3, 4]


def test_sys_exit_in_run_function_is_a_non_zero_return_code(host: LocalHost) -> None:
    def exit_immediately() -> None:
        sys.exit(101)

    with pytest.raises(TaskException) as info:
        asyncio.run(run_function(exit_immediately, host, deployment=PREINSTALLED))
    assert info.value.state == "NON_ZERO_RETURN_CODE"
    assert info.value.remote_message == "101"


def test_result_that_cannot_be_unpickled_here(host: LocalHost, test_repo: GitRepo) -> None:
    """The task's value is an instance of a class only the remote side can import."""
    with pytest.raises(RunMapTasksFailedException) as info:
        asyncio.run(
            run_map(
                "remote_only.make",  # type: ignore[arg-type]
                [1, 2, 3, 4],
                host,
                deployment=Deployment.git_repo(
                    test_repo.url, branch="main", path_to_source="example_package"
                ),
            )
        )
    assert len(info.value.failed_tasks) == 4
    assert all(t.state == "RESULT_CANNOT_BE_UNPICKLED" for t in info.value.failed_tasks)


def test_waiting_on_a_map_later_still_names_the_failed_args(host: LocalHost) -> None:
    """A map submitted without waiting, then waited on: the args come from the store."""

    def fail_on_b(x: str) -> str:
        if x == "b":
            raise ValueError(x)
        return x

    handle = run_map_sync(fail_on_b, ["a", "b", "c"], host, wait_for_result=False)
    assert handle is not None
    with pytest.raises(RunMapTasksFailedException) as info:
        handle.wait_sync()
    assert info.value.failed_task_args == ["b"]
    assert "with arg ('b')" in str(info.value)
