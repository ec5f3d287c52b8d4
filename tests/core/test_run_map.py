"""run_map and run_map_as_completed on LocalHost: order, failures, retries, limits."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
import tasks
from tasks import managed_host, max_overlap, wait_until_gone

from meadow_core import (
    InvalidRequestError,
    LocalHost,
    Resources,
    RunMapTasksFailedException,
    SerializationError,
    TaskResult,
    cancel_job_sync,
    deterministic_job_id,
    read_task_log_sync,
    run_function_sync,
    run_map,
    run_map_as_completed,
    run_map_as_completed_sync,
    run_map_sync,
)


def _by_task(results: list[TaskResult[object]]) -> dict[int, TaskResult[object]]:
    by_task = {r.task_id: r for r in results}
    assert len(by_task) == len(results), "a task was reported twice"
    return by_task


# -- results --------------------------------------------------------------------------------


def test_results_in_input_order(host: LocalHost) -> None:
    # Later items finish first, so completion order is the reverse of input order.
    args = [(i, 0.05 * (6 - i)) for i in range(6)]
    assert run_map_sync(tasks.maybe_slow, args, host=host, num_concurrent_tasks=6) == list(range(6))


def test_empty_map_returns_empty_list(host: LocalHost) -> None:
    assert run_map_sync(tasks.square, [], host=host) == []
    assert list(run_map_as_completed_sync(tasks.square, [], host=host)) == []


def test_as_completed_yields_one_result_per_task(host: LocalHost) -> None:
    results = list(run_map_as_completed_sync(tasks.square, list(range(8)), host=host))
    by_task = _by_task(results)
    assert sorted(by_task) == list(range(8))
    for task_id, result in by_task.items():
        assert result.is_success and result.outcome == "succeeded"
        assert result.result == task_id * task_id
        assert result.attempt == 1
        assert result.result_or_raise() == task_id * task_id


def test_async_map_and_as_completed(host: LocalHost) -> None:
    async def main() -> tuple[list[int], list[TaskResult[int]]]:
        values = await run_map(tasks.square, [1, 2, 3], host=host)
        results = [r async for r in run_map_as_completed(tasks.square, [4, 5, 6], host=host)]
        return values, results

    values, results = asyncio.run(main())
    assert values == [1, 4, 9]
    assert {r.task_id: r.result for r in results} == {0: 16, 1: 25, 2: 36}


def test_a_lambda_can_be_mapped(host: LocalHost) -> None:
    offset = 1000
    assert run_map_sync(lambda x: x + offset, [1, 2, 3], host=host) == [1001, 1002, 1003]


def test_large_arguments(host: LocalHost) -> None:
    blobs = [os.urandom(150 * 1024) for _ in range(3)]
    assert run_map_sync(tasks.identity, blobs, host=host) == blobs


def test_same_job_id_runs_the_map_once(host: LocalHost, tmp_path: Path) -> None:
    job_id = deterministic_job_id("map", "step", uuid.uuid4().hex)
    paths = [str(tmp_path / f"runs-{i}") for i in range(3)]
    first = run_map_sync(tasks.append_and_count, paths, host=host, job_id=job_id)
    second = run_map_sync(tasks.append_and_count, paths, host=host, job_id=job_id)
    assert first == second == [1, 1, 1]
    assert all(Path(p).read_text() == "ran\n" for p in paths)


def test_map_output_is_logged_per_task(host: LocalHost, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meadow")
    tags = [uuid.uuid4().hex for _ in range(3)]
    job_id = f"job-map-log-{tags[0]}"
    assert run_map_sync(tasks.chatty, tags, host=host, job_id=job_id) == tags
    for task_id, tag in enumerate(tags):
        records = [r for r in caplog.records if f"stdout line {tag}" in r.getMessage()]
        assert records, f"the output of task {task_id} was not logged"
        for record in records:
            assert record.meadow_task_id == task_id  # type: ignore[attr-defined]
            assert record.meadow_job_id == job_id  # type: ignore[attr-defined]
        log = read_task_log_sync(job_id, task_id, host)
        assert f"stdout line {tag}" in log and f"c-level line {tag}" in log
        assert all(other not in log for other in tags if other != tag)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_num_task_attempts": 0}, "max_num_task_attempts"),
        ({"num_concurrent_tasks": 0}, "num_concurrent_tasks"),
        ({"retry_with_more_memory": True}, "retry_with_more_memory"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
    ],
)
def test_invalid_map_requests_fail_before_a_job(
    host: LocalHost, kwargs: dict[str, object], match: str
) -> None:
    before = host.place.queue.list_jobs(limit=100_000)
    with pytest.raises(InvalidRequestError, match=match):
        run_map_sync(tasks.square, [1, 2], host=host, **kwargs)
    assert host.place.queue.list_jobs(limit=100_000) == before


def test_unpicklable_map_argument_is_named(host: LocalHost) -> None:
    before = host.place.queue.list_jobs(limit=100_000)
    with pytest.raises(SerializationError, match="argument 1"):
        run_map_sync(tasks.identity, [1, threading.Lock(), 3], host=host)
    assert host.place.queue.list_jobs(limit=100_000) == before


def test_a_map_by_function_name_resolves_it_on_the_worker(host: LocalHost) -> None:
    # The seed's reference allows "package.module.function" (what git_repo code needs).
    assert run_map_sync("tasks.square", [1, 2, 3], host=host) == [1, 4, 9]


# -- failures and retries ---------------------------------------------------------------------


def test_failed_tasks_are_listed_and_other_results_kept(host: LocalHost) -> None:
    with pytest.raises(RunMapTasksFailedException) as info:
        run_map_sync(tasks.fail_some, list(range(5)), host=host)
    exc = info.value
    assert [t.task_id for t in exc.failed_tasks] == [1, 3]
    for failed in exc.failed_tasks:
        assert not failed.is_success
        assert failed.attempt == 1
        assert failed.outcome == "failed"
        assert failed.exception is not None
        remote_type, message, traceback = failed.exception
        assert "ValueError" in remote_type
        assert f"bad item {failed.task_id}" in message
        assert "fail_some" in traceback
    assert exc.results == [0, None, 200, None, 400]
    assert "2 of 5 tasks failed" in str(exc)


def test_retry_after_a_transient_failure(host: LocalHost, tmp_path: Path) -> None:
    args = [(str(tmp_path), i, i == 2) for i in range(4)]
    results = list(
        run_map_as_completed_sync(
            tasks.fail_first_attempt, args, host=host, max_num_task_attempts=3
        )
    )
    by_task = _by_task(results)
    assert {i: r.result for i, r in by_task.items()} == {0: 0, 1: 10, 2: 20, 3: 30}
    assert all(r.is_success for r in results)
    assert by_task[2].attempt == 2
    assert [by_task[i].attempt for i in (0, 1, 3)] == [1, 1, 1]
    # run_map gives plain values with the same retries.
    args = [(str(tmp_path / "again"), i, i == 1) for i in range(3)]
    (tmp_path / "again").mkdir()
    assert run_map_sync(tasks.fail_first_attempt, args, host=host, max_num_task_attempts=2) == [
        0,
        10,
        20,
    ]


def test_a_task_that_always_fails_uses_every_attempt(host: LocalHost) -> None:
    with pytest.raises(RunMapTasksFailedException) as info:
        run_map_sync(tasks.always_fail, [7], host=host, max_num_task_attempts=2)
    (failed,) = info.value.failed_tasks
    assert failed.task_id == 0 and failed.attempt == 2 and failed.outcome == "failed"
    assert failed.exception is not None and "task 7 always fails" in failed.exception[1]


def test_killed_worker_is_retried(host: LocalHost, tmp_path: Path) -> None:
    args = [(str(tmp_path), i, i == 1) for i in range(3)]
    results = list(
        run_map_as_completed_sync(
            tasks.sigkill_first_attempt, args, host=host, max_num_task_attempts=2
        )
    )
    by_task = _by_task(results)
    assert all(r.is_success for r in results)
    assert by_task[1].attempt == 2
    killed = int((tmp_path / "killed-pid-1").read_text())
    assert by_task[1].result != killed


def test_killed_worker_without_retries_is_reported_as_crashed(
    host: LocalHost, tmp_path: Path
) -> None:
    args = [(str(tmp_path), i, i == 0) for i in range(2)]
    with pytest.raises(RunMapTasksFailedException) as info:
        run_map_sync(tasks.sigkill_first_attempt, args, host=host)
    (failed,) = info.value.failed_tasks
    assert failed.task_id == 0 and failed.outcome == "crashed" and failed.attempt == 1
    assert failed.exception is not None
    assert "SIGKILL" in failed.exception[1]
    assert info.value.results[1] is not None  # the other task still ran
    # The dead worker is gone and replaced: later work runs in a different process.
    killed = int((tmp_path / "killed-pid-0").read_text())
    assert wait_until_gone([killed]) == []
    assert run_function_sync(tasks.getpid, host=host) != killed


# -- memory -------------------------------------------------------------------------------------


def test_memory_limit_kills_the_task(host: LocalHost) -> None:
    with pytest.raises(RunMapTasksFailedException) as info:
        run_map_sync(
            tasks.allocate,
            [(400, 2.0)],
            host=host,
            resources_per_task=Resources(memory_gb=0.15),
        )
    (failed,) = info.value.failed_tasks
    assert failed.outcome == "crashed"
    assert failed.exception is not None
    assert failed.exception[0] == "meadow.MemoryLimitExceeded"
    assert "memory_gb" in failed.exception[1]


def test_retry_with_more_memory(host: LocalHost) -> None:
    results = list(
        run_map_as_completed_sync(
            tasks.allocate,
            [(250, 1.0)],
            host=host,
            resources_per_task=Resources(memory_gb=0.15),
            max_num_task_attempts=4,
            retry_with_more_memory=True,
        )
    )
    (result,) = results
    assert result.is_success, result.exception
    assert result.result == 250
    assert result.attempt in (2, 3)
    assert result.max_memory_used_gb is not None and result.max_memory_used_gb > 0.2


def test_without_retry_with_more_memory_every_attempt_fails(host: LocalHost) -> None:
    with pytest.raises(RunMapTasksFailedException) as info:
        run_map_sync(
            tasks.allocate,
            [(250, 1.0)],
            host=host,
            resources_per_task=Resources(memory_gb=0.15),
            max_num_task_attempts=2,
        )
    (failed,) = info.value.failed_tasks
    assert failed.attempt == 2
    assert failed.exception is not None
    assert failed.exception[0] == "meadow.MemoryLimitExceeded"


# -- concurrency and capacity -------------------------------------------------------------------


def test_num_concurrent_tasks_bounds_overlap(host: LocalHost) -> None:
    results = run_map_sync(
        tasks.interval, [(i, 0.3) for i in range(6)], host=host, num_concurrent_tasks=2
    )
    assert [r[0] for r in results] == list(range(6))
    overlap = max_overlap([(start, end) for _, start, end in results])
    assert overlap == 2, f"{overlap} tasks overlapped; expected exactly 2"


def test_one_concurrent_task_runs_tasks_one_after_another(host: LocalHost) -> None:
    results = run_map_sync(
        tasks.interval, [(i, 0.1) for i in range(4)], host=host, num_concurrent_tasks=1
    )
    assert max_overlap([(start, end) for _, start, end in results]) == 1


def test_host_capacity_bounds_overlap(tmp_path: Path) -> None:
    with managed_host(tmp_path, logical_cpu=2) as small:
        results = run_map_sync(
            tasks.interval,
            [(i, 0.3) for i in range(6)],
            host=small,
            resources_per_task=Resources(logical_cpu=1),
            num_concurrent_tasks=6,
        )
    overlap = max_overlap([(start, end) for _, start, end in results])
    assert overlap <= 2, f"{overlap} one-CPU tasks overlapped on a two-CPU host"


def test_timeout_in_a_map_is_retried_then_reported(host: LocalHost) -> None:
    args = [(0, 0.0), (1, 30.0), (2, 0.0)]
    start = time.monotonic()
    results = list(
        run_map_as_completed_sync(
            tasks.maybe_slow, args, host=host, timeout_seconds=0.5, max_num_task_attempts=2
        )
    )
    elapsed = time.monotonic() - start
    by_task = _by_task(results)
    assert by_task[1].outcome == "timeout" and by_task[1].attempt == 2
    assert by_task[1].exception is not None
    assert by_task[1].exception[0] == "meadow.TaskTimeout"
    assert [by_task[i].result for i in (0, 2)] == [0, 2]
    assert by_task[0].is_success and by_task[2].is_success
    assert elapsed < 15, f"two 0.5 s timeouts took {elapsed:.1f}s"


# -- scale and warm workers ---------------------------------------------------------------------


def test_ten_thousand_tasks(host: LocalHost) -> None:
    args = list(range(10_000))
    start = time.monotonic()
    results = run_map_sync(tasks.square, args, host=host)
    elapsed = time.monotonic() - start
    print(f"10,000-task map took {elapsed:.2f}s")
    assert results == [x * x for x in args]
    assert elapsed < 60


def test_warm_workers_keep_module_state(host: LocalHost) -> None:
    results = run_map_sync(tasks.count_calls, list(range(20)), host=host, num_concurrent_tasks=2)
    by_pid: dict[int, list[tuple[int, int]]] = {}
    for pid, calls, object_id in results:
        by_pid.setdefault(pid, []).append((calls, object_id))
    assert os.getpid() not in by_pid
    assert len(by_pid) <= 2
    for pid, seen in by_pid.items():
        counts = [calls for calls, _ in seen]
        # Each worker imported the module once and kept its counter between tasks.
        assert len(set(counts)) == len(counts), f"worker {pid} restarted its module: {counts}"
        assert len({object_id for _, object_id in seen}) == 1
    assert max(len(seen) for seen in by_pid.values()) >= 2


def test_memory_limit_stops_memory_used_by_a_child_process(host: LocalHost) -> None:
    """Memory of the task's children counts, and killing the task frees it promptly."""
    import sys

    tag = uuid.uuid4().hex
    code = f"import time; block = bytearray(b'1') * (300 * 2**20); time.sleep(12)  # {tag}"
    argv = [sys.executable, "-c", code]
    start = time.monotonic()
    try:
        with pytest.raises(RunMapTasksFailedException) as info:
            run_map_sync(
                tasks.run_child, [argv], host=host, resources_per_task=Resources(memory_gb=0.15)
            )
        elapsed = time.monotonic() - start
        (failed,) = info.value.failed_tasks
        assert failed.exception is not None
        assert failed.exception[0] == "meadow.MemoryLimitExceeded"
        assert elapsed < 8, f"the memory limit was reported after {elapsed:.1f}s"
        assert tasks.wait_no_processes(argv) == [], "the child still holds its memory"
    finally:
        tasks.kill_all(tasks.processes_with_cmdline(argv))


def test_a_worker_killed_with_tasks_queued_behind_it_loses_none(
    host: LocalHost, tmp_path: Path
) -> None:
    # Short tasks get the next task queued in their worker; when that worker dies,
    # the queued tasks never ran and must run once elsewhere, on their first attempt.
    args = [(str(tmp_path), i, i == 150) for i in range(300)]
    results = list(
        run_map_as_completed_sync(
            tasks.sigkill_first_attempt,
            args,
            host=host,
            num_concurrent_tasks=2,
            max_num_task_attempts=2,
        )
    )
    by_task = _by_task(results)
    assert sorted(by_task) == list(range(300))
    assert all(r.is_success for r in results)
    assert by_task[150].attempt == 2
    assert {r.attempt for i, r in by_task.items() if i != 150} == {1}


def test_cancelling_a_map_of_short_tasks_stops_it(host: LocalHost) -> None:
    handle = run_map_sync(
        tasks.sleep_then_return_one,
        [0.01] * 2000,
        host=host,
        num_concurrent_tasks=2,
        wait_for_result=False,
    )
    time.sleep(1.0)
    cancel_job_sync(handle.job_id, host)
    with pytest.raises(RunMapTasksFailedException) as failure:
        handle.wait_sync()
    outcomes = {t.outcome for t in failure.value.failed_tasks}
    assert outcomes == {"cancelled"}
    done = [r for r in failure.value.results if r == 1]
    assert 0 < len(done) < 2000
    assert len(done) + len(failure.value.failed_tasks) == 2000


def test_a_retry_that_outgrows_the_machine_fails_with_what_the_machine_has(
    tmp_path: Path,
) -> None:
    with (
        managed_host(tmp_path / "home", memory_gb=1.0) as small,
        pytest.raises(RunMapTasksFailedException) as failure,
    ):
        run_map_sync(
            tasks.allocate,
            [(700, 2.0)],
            host=small,
            resources_per_task=Resources(memory_gb=0.6),
            max_num_task_attempts=3,
            retry_with_more_memory=True,
        )
    (task,) = failure.value.failed_tasks
    assert task.attempt == 2
    assert task.exception is not None
    assert task.exception[0] == "meadow.UnsatisfiableResources"
    assert "1.2 GB" in task.exception[1] and "1.0 GB memory" in task.exception[1]
