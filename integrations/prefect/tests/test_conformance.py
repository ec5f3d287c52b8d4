"""The contracts prefect-dask's own task runner tests check, against MeadowTaskRunner.

Each test looks at what a Prefect user sees: return values, futures, and the task run
states the Prefect API recorded.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from conftest import task_runs
from meadow_prefect import MeadowTaskRunner
from prefect import flow, task
from prefect.client.orchestration import SyncPrefectClient
from prefect.futures import as_completed
from prefect.states import State, StateType

from meadow_core import LocalHost


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def fail() -> None:
    raise ValueError("this task fails on purpose")


def test_duplicate(host: LocalHost) -> None:
    runner = MeadowTaskRunner(host=host, timeout_seconds=30)
    twin = runner.duplicate()
    assert isinstance(twin, MeadowTaskRunner)
    assert twin is not runner
    assert twin == runner
    assert twin.host is host and twin.timeout_seconds == 30


def test_success(host: LocalHost, client: SyncPrefectClient) -> None:
    @flow(task_runner=MeadowTaskRunner(host=host))
    def adding() -> int:
        return add.submit(2, 3).result()

    state: State[int] = adding(return_state=True)
    assert state.result() == 5
    [run] = task_runs(client, state.state_details.flow_run_id, 1)
    assert run.state is not None and run.state.type == StateType.COMPLETED


def test_failure_propagates_to_downstream(host: LocalHost, client: SyncPrefectClient) -> None:
    @flow(task_runner=MeadowTaskRunner(host=host))
    def failing() -> tuple[State[None], State[int]]:
        upstream = fail.submit()
        downstream = add.submit(upstream, 1)  # type: ignore[arg-type]
        downstream.wait()
        upstream.wait()
        return upstream.state, downstream.state

    state = failing(return_state=True)
    upstream, downstream = state.result(raise_on_failure=False)
    assert upstream.is_failed()
    assert downstream.type == StateType.PENDING and downstream.name == "NotReady"

    def recorded(runs: list[Any]) -> bool:
        names = {r.state.name for r in runs if r.state is not None}
        return "Failed" in names and "NotReady" in names

    runs = task_runs(client, state.state_details.flow_run_id, 2, final=False, ready=recorded)
    by_name = {r.task_key.split("-")[0] if r.task_key else r.name: r for r in runs}
    assert any(r.state is not None and r.state.is_failed() for r in runs)
    assert any(r.state is not None and r.state.name == "NotReady" for r in runs), by_name


def test_async_task(host: LocalHost) -> None:
    @task
    async def slow_double(x: int) -> tuple[int, int]:
        await asyncio.sleep(0.05)
        return 2 * x, os.getpid()

    @flow(task_runner=MeadowTaskRunner(host=host))
    async def async_flow() -> list[tuple[int, int]]:
        futures = [slow_double.submit(i) for i in range(3)]
        return [f.result() for f in futures]

    results = asyncio.run(async_flow())
    assert [value for value, _ in results] == [0, 2, 4]
    assert all(pid != os.getpid() for _, pid in results)  # ran in a Meadow worker


def test_wait_for_orders_tasks(host: LocalHost, tmp_path: Path) -> None:
    marker = tmp_path / "first-done"

    @task
    def first(path: str) -> None:
        import time

        time.sleep(0.5)
        Path(path).write_text("done")

    @task
    def second(path: str) -> str:
        return Path(path).read_text()

    @flow(task_runner=MeadowTaskRunner(host=host))
    def ordered() -> str:
        a = first.submit(str(marker))
        b = second.submit(str(marker), wait_for=[a])
        return b.result()

    assert ordered() == "done"


def test_submit_outside_a_flow_with_as_completed(host: LocalHost) -> None:
    with MeadowTaskRunner(host=host) as runner:
        futures = [runner.submit(add, {"x": i, "y": 10}) for i in range(5)]
        results = sorted(f.result() for f in as_completed(futures))
    assert results == [10, 11, 12, 13, 14]


def test_nested_submission(host: LocalHost) -> None:
    @task
    def nested() -> str:
        return "nested task"

    @task
    def parent() -> str:
        return nested.submit().result()

    @flow(task_runner=MeadowTaskRunner(host=host, nested=True))
    def umbrella() -> str:
        return parent.submit().result()

    assert umbrella() == "nested task"


def test_worker_crash_is_crashed(host: LocalHost, client: SyncPrefectClient) -> None:
    @task
    def die() -> None:
        os._exit(9)

    @flow(task_runner=MeadowTaskRunner(host=host))
    def crashing() -> State[None]:
        future = die.submit()
        future.wait()
        return future.state

    state = crashing(return_state=True)
    task_state = state.result(raise_on_failure=False)
    assert task_state.is_crashed(), task_state
    assert "WorkerCrashed" in (task_state.message or "")
    [run] = task_runs(client, state.state_details.flow_run_id, 1)
    assert run.state is not None and run.state.type == StateType.CRASHED
