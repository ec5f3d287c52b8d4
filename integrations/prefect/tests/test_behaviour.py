"""What a Prefect user notices beyond the conformance contracts: an unreachable API on
the remote side, retries, caching, remote logs, a 1,000-input map, cancellation,
per-task resources, and bad input failing the task run with a useful message.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import logs_of, poll, task_runs
from meadow_prefect import MeadowTaskRunner, meadow_options
from prefect import flow, task
from prefect.cache_policies import INPUTS
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import Log
from prefect.states import StateType

from meadow_core import (
    Deployment,
    LocalHost,
    Resources,
    deterministic_job_id,
    get_job_sync,
)

UNREACHABLE = "http://127.0.0.1:9/api"


@task(retries=1, retry_delay_seconds=0)
def flaky(marker: str) -> str:
    """Fails on its first attempt (no marker file yet), succeeds on the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("attempt 1")
        raise RuntimeError("first attempt fails")
    return f"ok after {path.read_text()}"


@task
def chatty(x: int) -> int:
    import logging

    print(f"printed on the remote side {x}")
    logging.getLogger("user.code").warning("logged on the remote side %s", x)
    return x + 1


@task(cache_policy=INPUTS)
def cached_square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@task
def api_is_unreachable() -> str:
    """Proves where it runs: Prefect's API address points nowhere reachable."""
    import socket

    url = os.environ["PREFECT_API_URL"]
    with socket.socket() as sock:
        sock.settimeout(1)
        reachable = sock.connect_ex(("127.0.0.1", 9)) == 0
    return f"{url} reachable={reachable}"


def test_states_correct_when_remote_cannot_reach_api(
    host: LocalHost, client: SyncPrefectClient, tmp_path: Path
) -> None:
    runner = MeadowTaskRunner(
        host=host, deployment=Deployment(environment_variables={"PREFECT_API_URL": UNREACHABLE})
    )

    @task
    def boom() -> None:
        raise KeyError("remote failure")

    @flow(task_runner=runner)
    def offline() -> tuple[str, str, int, tuple[str, str]]:
        where = api_is_unreachable.submit()
        retried = flaky.submit(str(tmp_path / "marker"))
        logged = chatty.submit(1)
        failed = boom.submit()
        failed.wait()
        failure = (failed.state.type.value, failed.state.message or "")
        return where.result(), retried.result(), logged.result(), failure

    state = offline(return_state=True)
    where, retried, logged, failed = state.result()
    assert where == f"{UNREACHABLE} reachable=False"
    assert retried == "ok after attempt 1"
    assert logged == 2
    assert failed[0] == "FAILED" and "remote failure" in failed[1]
    recorded = task_runs(client, state.state_details.flow_run_id, 4)
    runs = {r.name.rsplit("-", 1)[0]: r for r in recorded}
    assert runs["api_is_unreachable"].state.type == StateType.COMPLETED  # type: ignore[union-attr]
    assert runs["flaky"].state.type == StateType.COMPLETED  # type: ignore[union-attr]
    assert runs["flaky"].run_count == 2
    assert runs["boom"].state.type == StateType.FAILED  # type: ignore[union-attr]
    logs = logs_of(client, runs["chatty"].id, "printed on the remote side 1")
    assert any("logged on the remote side 1" in log.message for log in logs)


def test_retry_runs_a_new_meadow_job_per_attempt(
    host: LocalHost, client: SyncPrefectClient, tmp_path: Path
) -> None:
    @flow(task_runner=MeadowTaskRunner(host=host))
    def retrying() -> str:
        return flaky.submit(str(tmp_path / "marker")).result()

    state = retrying(return_state=True)
    assert state.result() == "ok after attempt 1"
    [run] = task_runs(client, state.state_details.flow_run_id, 1)
    assert run.run_count == 2 and run.state is not None and run.state.is_completed()
    first = get_job_sync(deterministic_job_id("prefect", run.id, 1), host)
    second = get_job_sync(deterministic_job_id("prefect", run.id, 2), host)
    assert (first.state, first.num_failed) == ("failed", 1)
    assert second.state == "succeeded"
    logs = logs_of(client, run.id, "first attempt fails")
    assert any("RuntimeError" in log.message for log in logs)


def test_caching_skips_the_remote_call(host: LocalHost) -> None:
    key = uuid.uuid4().int % 10**9  # results persist across test runs; a fresh input

    @flow(task_runner=MeadowTaskRunner(host=host))
    def twice() -> tuple[str, str, tuple[int, int], tuple[int, int]]:
        first = cached_square.submit(key)
        first.wait()
        second = cached_square.submit(key)
        second.wait()
        return first.state.name, second.state.name, first.result(), second.result()

    first, second, value, again = twice()
    assert (first, second) == ("Completed", "Cached")
    assert value == again and value[0] == key**2
    assert value[1] != os.getpid()


def test_remote_logs_in_the_api(host: LocalHost, client: SyncPrefectClient) -> None:
    @flow(task_runner=MeadowTaskRunner(host=host))
    def logging_flow() -> list[int]:
        return [f.result() for f in [chatty.submit(7), *chatty.map([8, 9])]]

    state = logging_flow(return_state=True)
    assert state.result() == [8, 9, 10]
    flow_run_id = state.state_details.flow_run_id
    runs = {r.id for r in task_runs(client, flow_run_id, 3)}
    wanted = [f"printed on the remote side {v}" for v in (7, 8, 9)]
    # Printed lines and logger records reach the API in separate batches: wait for both.
    logged = "logged on the remote side 8"

    def all_logged() -> list[Log] | None:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        found = all(any(w in log.message for log in logs) for w in [*wanted, logged])
        return logs if found else None

    logs = poll(all_logged, timeout=30)
    assert logs, "remote output did not reach the Prefect API"
    owners = {w: {log.task_run_id for log in logs if w in log.message} for w in wanted}
    assert all(len(o) == 1 and o <= runs for o in owners.values()), owners
    assert len(set().union(*owners.values())) == 3  # each line in its own task run
    assert not any("[task " in log.message for log in logs)
    assert any(logged in log.message for log in logs)


def test_map_failures_and_crashes_per_element(host: LocalHost) -> None:
    @task
    def picky(x: int) -> int:
        if x == 3:
            raise ValueError("three is not allowed")
        if x == 5:
            os._exit(1)
        return x

    @flow(task_runner=MeadowTaskRunner(host=host))
    def mixed() -> list[tuple[str, str, int | None]]:
        futures = picky.map(range(8))
        futures.wait()
        return [
            (
                f.state.type.value,
                f.state.message or "",
                f.result() if f.state.is_completed() else None,
            )
            for f in futures
        ]

    states = mixed()
    assert states[3][0] == "FAILED" and "three is not allowed" in states[3][1]
    assert states[5][0] == "CRASHED" and "WorkerCrashed" in states[5][1]
    assert [s[2] for i, s in enumerate(states) if i not in (3, 5)] == [0, 1, 2, 4, 6, 7]


def test_failing_flow_cancels_running_meadow_jobs(host: LocalHost, tmp_path: Path) -> None:
    started_file = tmp_path / "started"

    @task
    def sleepy(path: str) -> None:
        Path(path).write_text("started")
        time.sleep(120)

    submitted: list[object] = []

    @flow(task_runner=MeadowTaskRunner(host=host))
    def gives_up() -> None:
        future = sleepy.submit(str(started_file))
        submitted.append(future.task_run_id)
        deadline = time.monotonic() + 30
        while not started_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        raise RuntimeError("the flow gives up while its task still runs")

    started = time.monotonic()
    state = gives_up(return_state=True)
    assert state.is_failed()
    assert time.monotonic() - started < 60
    assert started_file.exists()
    job = get_job_sync(deterministic_job_id("prefect", submitted[0], 1), host)
    assert job.state == "cancelled"


def test_cancelling_the_future_cancels_the_job(host: LocalHost, tmp_path: Path) -> None:
    started_file = tmp_path / "started"

    @task
    def sleepy(path: str) -> None:
        Path(path).write_text("started")
        time.sleep(120)

    @flow(task_runner=MeadowTaskRunner(host=host))
    def cancelling() -> str:
        future = sleepy.submit(str(started_file))
        deadline = time.monotonic() + 30
        while not started_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert future.cancel()  # type: ignore[attr-defined]
        future.wait(timeout=30)
        return future.state.type.value

    assert cancelling() == "CANCELLED"


def test_per_task_resources(host: LocalHost) -> None:
    @task(tags=["meadow:memory_gb=1.5"])
    def tagged() -> int:
        return 1

    @task
    def plain() -> int:
        return 2

    @flow(task_runner=MeadowTaskRunner(host=host, resources=Resources(logical_cpu=1)))
    def heavy() -> list[str]:
        ids = []
        for future in (tagged.submit(), plain.submit()):
            future.wait()
            ids.append(future.task_run_id)
        with meadow_options(resources=Resources(logical_cpu=2, memory_gb=2)):
            big = plain.submit()
        big.wait()
        ids.append(big.task_run_id)
        return [deterministic_job_id("prefect", i, 1) for i in ids]

    specs = [asyncio.run(host.get_spec(job_id)) for job_id in heavy()]
    resources = [(s.resources.get("memory_gb"), s.resources.get("logical_cpu")) for s in specs]  # type: ignore[union-attr]
    assert resources[0][0] == 1.5
    assert resources[1] == (None, 1)
    assert resources[2] == (2, 2)


@pytest.mark.parametrize(
    ("runner_kwargs", "argument", "expected"),
    [
        ({"host": "not-a-host"}, 1, "host must be a meadow_core Host"),
        ({"resources": Resources(logical_cpu=4096)}, 1, "4096"),
        ({}, threading.Lock(), "cannot be pickled"),
    ],
    ids=["non-meadow-host", "impossible-resources", "unpicklable-parameter"],
)
def test_bad_input_fails_the_task_run(
    host: LocalHost, runner_kwargs: dict[str, object], argument: object, expected: str
) -> None:
    @task
    def identity(x: object) -> object:
        return x

    kwargs = {"host": host, **runner_kwargs}

    @flow(task_runner=MeadowTaskRunner(**kwargs))  # type: ignore[arg-type]
    def bad() -> tuple[str, str]:
        future = identity.submit(argument)
        future.wait()
        return future.state.type.value, future.state.message or ""

    state_type, message = bad()
    assert state_type == "FAILED"
    assert expected in message, message
