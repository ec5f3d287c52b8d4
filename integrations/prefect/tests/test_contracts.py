"""Contracts Prefect's own task runners keep (ThreadPoolTaskRunner, ProcessPoolTaskRunner
and prefect-dask, as Prefect's ``tests/test_task_runners.py`` checks them), against
MeadowTaskRunner: issue 17's Prefect items.

- the task's own exception comes out of ``.result()``, with the remote traceback;
- the task body runs in its task run's context: ``get_run_logger()``, tags,
  ``prefect.runtime``, events tied to the task run, all without the Prefect API on
  the remote side; nested ``.submit()`` fails with an error naming the limitation;
- ``KeyboardInterrupt``/``SystemExit`` crash the task run; runners compare by settings.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import logs_of, poll, task_runs
from meadow_prefect import MeadowTaskRunner
from prefect import flow, tags, task
from prefect.client.orchestration import SyncPrefectClient
from prefect.context import TagsContext
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.logging import get_run_logger
from prefect.states import State, StateType

from meadow_core import Deployment, LocalHost, TaskException

UNREACHABLE = "http://127.0.0.1:9/api"


class NeedsTwoArguments(Exception):
    """A user exception whose constructor takes more than a message."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class HoldsALock(Exception):
    """An exception that cannot be pickled: it cannot come back as itself."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


@task
def raise_value_error() -> None:
    raise ValueError("the task's own message")


@task
async def raise_runtime_error_async() -> None:
    raise RuntimeError("async task's own message")


@task
def raise_user_exception() -> None:
    raise NeedsTwoArguments(42, "with details")


@task
def raise_unpicklable() -> None:
    raise HoldsALock()


@task
def maybe_raise(x: int) -> int:
    if x == 1:
        raise KeyError("element one")
    return x


@task
def current_tags(x: int = 0) -> set[str]:
    return set(TagsContext.get().current_tags)


@task
async def current_tags_async(x: int = 0) -> set[str]:
    return set(TagsContext.get().current_tags)


# -- what the conformance tests leave out --------------------------------------------------


def test_a_runner_that_is_not_started_refuses_work(host: LocalHost) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        MeadowTaskRunner(host=host).submit(current_tags, {})


def test_futures_as_parameters_and_submit_does_not_block(host: LocalHost) -> None:
    @task
    def slow_add(x: int, y: int) -> int:
        import time

        time.sleep(0.5)
        return x + y

    @flow(task_runner=MeadowTaskRunner(host=host))
    def chained() -> tuple[float, tuple[int, int, int]]:
        started = time.monotonic()
        a = slow_add.submit(1, 2)
        b = slow_add.submit(3, 4, wait_for=[a])
        c = slow_add.submit(a, b)  # futures as parameters resolve to their results
        submitting = time.monotonic() - started
        return submitting, (a.result(), b.result(), c.result())

    submitting, results = chained()
    assert results == (3, 7, 10)
    assert submitting < 0.5, "submit() waited for its upstream tasks"


# -- item 3: the task's own exception -----------------------------------------------------


@pytest.mark.parametrize(
    ("failing", "expected", "message"),
    [
        (raise_value_error, ValueError, "the task's own message"),
        (raise_runtime_error_async, RuntimeError, "async task's own message"),
    ],
    ids=["sync", "async"],
)
def test_result_raises_the_tasks_own_exception(
    host: LocalHost, failing: Any, expected: type[Exception], message: str
) -> None:
    with MeadowTaskRunner(host=host) as runner:
        future = runner.submit(failing, {})
        with pytest.raises(expected, match=message) as info:
            future.result()
    cause = info.value.__cause__
    assert isinstance(cause, TaskException)  # the remote traceback stays attached
    assert failing.fn.__name__ in cause.remote_traceback
    assert future.state.is_failed()


def test_a_user_exception_keeps_its_type_and_attributes(host: LocalHost) -> None:
    with MeadowTaskRunner(host=host) as runner:
        future = runner.submit(raise_user_exception, {})
        with pytest.raises(NeedsTwoArguments) as info:
            future.result()
    assert (info.value.code, info.value.detail) == (42, "with details")


def test_an_exception_that_cannot_be_pickled_still_fails_the_task(host: LocalHost) -> None:
    with MeadowTaskRunner(host=host) as runner:
        future = runner.submit(raise_unpicklable, {})
        with pytest.raises(TaskException, match="holds a lock"):
            future.result()
    assert future.state.is_failed()


def test_map_elements_raise_their_own_exception(host: LocalHost) -> None:
    with MeadowTaskRunner(host=host) as runner:
        futures = runner.map(maybe_raise, {"x": [0, 1, 2]})
        assert [futures[0].result(), futures[2].result()] == [0, 2]
        with pytest.raises(KeyError, match="element one"):
            futures[1].result()


def test_retry_condition_sees_the_tasks_own_exception(host: LocalHost, tmp_path: Path) -> None:
    seen: list[str] = []

    def retry_on_value_error(task: Any, task_run: Any, state: State[Any]) -> bool:
        try:
            state.result()
        except Exception as exc:
            seen.append(type(exc).__name__)
            return isinstance(exc, ValueError)
        return False

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=retry_on_value_error)
    def fails_once(marker: str) -> str:
        path = Path(marker)
        if not path.exists():
            path.write_text("1")
            raise ValueError("first attempt")
        return "second attempt"

    @flow(task_runner=MeadowTaskRunner(host=host))
    def retrying() -> str:
        return fails_once.submit(str(tmp_path / "marker")).result()

    assert retrying() == "second attempt"
    assert seen == ["ValueError"]


# -- item 4: the task run's context on the remote side ------------------------------------


def _runner_without_api(host: LocalHost) -> MeadowTaskRunner:
    """The remote side gets an API address that answers nothing: what works there
    works without the Prefect API."""
    return MeadowTaskRunner(
        host=host, deployment=Deployment(environment_variables={"PREFECT_API_URL": UNREACHABLE})
    )


def test_get_run_logger_reaches_the_task_runs_log(
    host: LocalHost, client: SyncPrefectClient
) -> None:
    @task
    def logs_through_prefect(x: int) -> int:
        logger = get_run_logger()
        logger.warning("warned through get_run_logger %s", x)
        logger.info("informed through get_run_logger %s", x)
        return x

    @flow(task_runner=_runner_without_api(host))
    def logging_flow() -> list[int]:
        return [logs_through_prefect.submit(1).result(), *logs_through_prefect.map([2]).result()]

    state = logging_flow(return_state=True)
    assert state.result() == [1, 2]
    runs = task_runs(client, state.state_details.flow_run_id, 2)
    for run in runs:
        logs = logs_of(client, run.id, "informed through get_run_logger")
        x = next(log.message[-1] for log in logs if "informed through" in log.message)
        warned = [log for log in logs if log.message == f"warned through get_run_logger {x}"]
        informed = [log for log in logs if log.message == f"informed through get_run_logger {x}"]
        # Each record once, at its own level, as the message alone (no console format).
        assert [log.level for log in warned] == [30], [log.message for log in logs]
        assert [log.level for log in informed] == [20], [log.message for log in logs]
        relayed = [log.message for log in logs if "through get_run_logger" in log.message]
        assert sorted(relayed) == sorted(log.message for log in warned + informed), relayed


def test_tags_in_force_at_submission_reach_the_body(host: LocalHost) -> None:
    with tags("tag1", "tag2"), _runner_without_api(host) as runner:
        single = runner.submit(current_tags, {})
        single_async = runner.submit(current_tags_async, {})
        mapped = runner.map(current_tags, {"x": [1, 2]})
        mapped_async = runner.map(current_tags_async, {"x": [1, 2]})
        results = [
            single.result(),
            single_async.result(),
            *mapped.result(),
            *mapped_async.result(),
        ]
    assert results == [{"tag1", "tag2"}] * 6


def test_prefect_runtime_answers_in_the_body(host: LocalHost) -> None:
    @task(task_run_name="runtime-{x}", tags=["own-tag"])
    def introspect(x: int) -> dict[str, Any]:
        from prefect.runtime import flow_run, task_run

        return {
            "id": task_run.id,
            "name": task_run.name,
            "task_name": task_run.task_name,
            "tags": set(task_run.tags),
            "parameters": task_run.parameters,
            "run_count": task_run.run_count,
            "flow_run_id": flow_run.id,
        }

    @flow(task_runner=_runner_without_api(host))
    def runtime_flow() -> tuple[str, dict[str, Any]]:
        future = introspect.submit(5)
        return str(future.task_run_id), future.result()

    state = runtime_flow(return_state=True)
    task_run_id, seen = state.result()
    assert seen == {
        "id": task_run_id,
        "name": "runtime-5",
        "task_name": "introspect",
        "tags": {"own-tag"},
        "parameters": {"x": 5},
        "run_count": 1,
        "flow_run_id": str(state.state_details.flow_run_id),
    }


def test_events_from_the_body_are_tied_to_the_task_run(
    host: LocalHost, client: SyncPrefectClient
) -> None:
    resource_id = f"meadow.test.{uuid.uuid4()}"

    @task
    def emits() -> str:
        emit_event(event="meadow.test.emitted", resource={"prefect.resource.id": resource_id})
        return "emitted"

    @flow(task_runner=_runner_without_api(host))
    def emitting() -> tuple[str, str]:
        future = emits.submit()
        return str(future.task_run_id), future.result()

    state = emitting(return_state=True)
    task_run_id, result = state.result()
    assert result == "emitted"

    def emitted() -> list[Any]:
        page = client.read_events(
            EventFilter(event=EventNameFilter(name=["meadow.test.emitted"])), limit=50
        )
        return [e for e in page.events if e.resource.id == resource_id]

    events = poll(emitted, timeout=30)
    assert len(events) == 1, events
    related = {resource.id for resource in events[0].related}
    assert f"prefect.task-run.{task_run_id}" in related
    assert f"prefect.flow-run.{state.state_details.flow_run_id}" in related


def test_nested_submit_fails_naming_the_limitation(host: LocalHost) -> None:
    @task
    def child() -> int:
        return 1

    @task
    def parent() -> int:
        return child.submit().result()

    @flow(task_runner=_runner_without_api(host))
    def nesting() -> tuple[bool, str, Any]:
        future = parent.submit()
        future.wait()
        error = future.state.result(raise_on_failure=False)
        return future.state.is_failed(), future.state.message or "", error

    failed, message, exception = nesting()
    assert failed
    assert "cannot .submit() or .map() tasks" in message and "nested=True" in message, message
    assert isinstance(exception, RuntimeError)


# -- item 5: interrupts crash; equality -----------------------------------------------------


@pytest.mark.parametrize(
    ("interrupt", "message"),
    [
        (KeyboardInterrupt, "aborted by an interrupt signal"),
        (SystemExit, "aborted by Python system exit call"),
    ],
)
def test_an_interrupt_in_the_task_crashes_the_task_run(
    host: LocalHost, client: SyncPrefectClient, interrupt: type[BaseException], message: str
) -> None:
    @task
    def interrupted() -> None:
        raise interrupt()

    @flow(task_runner=MeadowTaskRunner(host=host))
    def interrupting() -> State[None]:
        future = interrupted.submit()
        future.wait()
        return future.state

    state = interrupting(return_state=True)
    task_state = state.result(raise_on_failure=False)
    assert task_state.is_crashed(), task_state
    assert message in (task_state.message or "")
    [run] = task_runs(client, state.state_details.flow_run_id, 1)
    assert run.state is not None and run.state.type == StateType.CRASHED


def test_runners_with_equal_settings_are_equal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runner = MeadowTaskRunner(host=LocalHost(home=home), max_workers=4)
    assert runner == MeadowTaskRunner(host=LocalHost(home=home), max_workers=4)
    assert runner.duplicate() == runner
    assert runner != MeadowTaskRunner(host=LocalHost(home=home), max_workers=2)
    assert runner != MeadowTaskRunner(host=LocalHost(home=tmp_path / "other"), max_workers=4)
    assert runner != MeadowTaskRunner(host=LocalHost(home=home), max_workers=4, timeout_seconds=5)
    assert runner != "not a runner"
