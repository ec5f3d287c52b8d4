"""run_function on LocalHost: values, errors, pickling, sync/async twins, jobs and logs."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tasks
from tasks import managed_host

from meadow_core import (
    Deployment,
    InvalidRequestError,
    JobHandle,
    LocalHost,
    SerializationError,
    TaskException,
    deterministic_job_id,
    get_job_sync,
    list_jobs_sync,
    read_task_log_sync,
    run_function,
    run_function_sync,
)


def _job_ids(host: LocalHost) -> list[str]:
    return [record.job_id for record in host.place.queue.list_jobs(limit=10_000)]


# -- values and arguments -----------------------------------------------------------------


def test_returns_the_value(host: LocalHost) -> None:
    assert run_function_sync(tasks.add, host=host, args=(2, 3)) == 5


def test_args_and_kwargs_arrive(host: LocalHost) -> None:
    result = run_function_sync(
        tasks.echo_call, host=host, args=(1, "two", [3]), kwargs={"four": 4.0, "five": None}
    )
    assert result == ((1, "two", [3]), {"four": 4.0, "five": None})


def test_function_given_by_dotted_name(host: LocalHost) -> None:
    assert run_function_sync("os.path.join", host=host, args=("a", "b")) == "a/b"
    assert run_function_sync("tasks.add", host=host, args=(20, 22)) == 42


def test_function_name_without_module_is_rejected(host: LocalHost) -> None:
    before = _job_ids(host)
    with pytest.raises(InvalidRequestError, match="module"):
        run_function_sync("add", host=host)
    assert _job_ids(host) == before


def test_missing_dotted_function_is_a_task_exception(host: LocalHost) -> None:
    with pytest.raises(TaskException) as info:
        run_function_sync("tasks.no_such_function", host=host)
    assert "AttributeError" in info.value.remote_type
    assert "no_such_function" in info.value.remote_message


def test_lambda_and_closure_are_pickled_by_value(host: LocalHost) -> None:
    assert run_function_sync(lambda x, y: x * y, host=host, args=(6, 7)) == 42
    secret = {"word": f"closure-{uuid.uuid4().hex}"}

    def closure(suffix: str) -> str:
        return secret["word"] + suffix

    assert run_function_sync(closure, host=host, args=("!",)) == secret["word"] + "!"


def test_runs_in_another_process(host: LocalHost) -> None:
    assert run_function_sync(os.getpid, host=host) != os.getpid()


def test_environment_variables_reach_the_function(host: LocalHost) -> None:
    value = f"value-{uuid.uuid4().hex}"
    deployment = Deployment.mirror_local(environment_variables={"MEADOW_TEST_VAR": value})
    result = run_function_sync(
        tasks.env_var, host=host, deployment=deployment, args=("MEADOW_TEST_VAR",)
    )
    assert result == value


# -- errors -------------------------------------------------------------------------------


def test_remote_exception_becomes_task_exception(host: LocalHost) -> None:
    def parse_the_input_records() -> None:
        raise ValueError("record 17 is malformed")

    with pytest.raises(TaskException) as info:
        run_function_sync(parse_the_input_records, host=host)
    exc = info.value
    assert "ValueError" in exc.remote_type
    assert "record 17 is malformed" in exc.remote_message
    assert "parse_the_input_records" in exc.remote_traceback
    assert "record 17 is malformed" in str(exc)


def test_unpicklable_function_fails_before_a_job_is_created(host: LocalHost) -> None:
    lock = threading.Lock()

    def uses_a_lock() -> bool:
        with lock:
            return True

    before = _job_ids(host)
    with pytest.raises(SerializationError):
        run_function_sync(uses_a_lock, host=host)
    assert _job_ids(host) == before


def test_unpicklable_argument_fails_before_a_job_is_created(host: LocalHost) -> None:
    before = _job_ids(host)
    with pytest.raises(SerializationError, match="argument"):
        run_function_sync(tasks.identity, host=host, args=(threading.Lock(),))
    with pytest.raises(SerializationError, match="argument"):
        run_function_sync(tasks.echo_call, host=host, kwargs={"lock": threading.Lock()})
    assert _job_ids(host) == before


def test_unpicklable_result_is_a_task_exception(host: LocalHost) -> None:
    with pytest.raises(TaskException) as info:
        run_function_sync(threading.Lock, host=host)
    assert "ResultNotPicklable" in info.value.remote_type
    # The worker survives a result it could not send: the next call works.
    assert run_function_sync(tasks.add, host=host, args=(1, 1)) == 2


def test_invalid_timeout_is_rejected(host: LocalHost) -> None:
    before = _job_ids(host)
    for bad in (0, -1):
        with pytest.raises(InvalidRequestError, match="timeout_seconds"):
            run_function_sync(tasks.add, host=host, args=(1, 2), timeout_seconds=bad)
    assert _job_ids(host) == before


# -- large payloads -------------------------------------------------------------------------


def test_large_argument_round_trips(host: LocalHost) -> None:
    data = os.urandom(300 * 1024)
    assert run_function_sync(tasks.identity, host=host, args=(data,)) == data


def test_large_result_round_trips(host: LocalHost) -> None:
    result = run_function_sync(lambda: bytes(range(256)) * 8192, host=host)  # 2 MiB
    assert result == bytes(range(256)) * 8192


# -- async and sync from threads ------------------------------------------------------------


def test_async_api(host: LocalHost) -> None:
    async def main() -> list[int]:
        return list(
            await asyncio.gather(
                run_function(tasks.add, host=host, args=(1, 2)),
                run_function(tasks.add, host=host, args=(3, 4)),
            )
        )

    assert asyncio.run(main()) == [3, 7]


def test_sync_api_from_threads_while_a_loop_runs(host: LocalHost) -> None:
    from_plain_thread: list[object] = []

    def plain_thread() -> None:
        from_plain_thread.append(run_function_sync(tasks.add, host=host, args=(10, 1)))

    async def main() -> int:
        thread = threading.Thread(target=plain_thread)
        thread.start()
        value = await asyncio.to_thread(run_function_sync, tasks.add, host=host, args=(20, 2))
        await asyncio.to_thread(thread.join, 60)
        return value  # type: ignore[no-any-return]

    assert asyncio.run(main()) == 22
    assert from_plain_thread == [11]


def test_two_concurrent_sync_calls_run_in_parallel(host: LocalHost) -> None:
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(run_function_sync, tasks.interval, host=host, args=((i, 1.0),))
            for i in range(2)
        ]
        results = [f.result(timeout=60) for f in futures]
    assert [r[0] for r in results] == [0, 1]
    assert tasks.max_overlap([(start, end) for _, start, end in results]) == 2


# -- jobs -------------------------------------------------------------------------------------


def test_wait_for_result_false_returns_a_handle(host: LocalHost) -> None:
    handle = run_function_sync(
        tasks.sleep_then_return, host=host, args=(0.3, "later"), wait_for_result=False
    )
    assert isinstance(handle, JobHandle)
    assert handle.job_id in [r.job_id for r in list_jobs_sync(host)]
    assert handle.wait_sync() == "later"
    assert handle.status_sync().state == "succeeded"
    record = get_job_sync(handle.job_id, host)
    assert record.state == "succeeded" and record.num_tasks == 1 and record.num_done == 1


def test_same_job_id_runs_once(host: LocalHost, tmp_path: Path) -> None:
    job_id = deterministic_job_id("run", "step", 1)
    assert deterministic_job_id("run", "step", 1) == job_id
    counter = str(tmp_path / "runs")
    first = run_function_sync(tasks.append_and_count, host=host, args=(counter,), job_id=job_id)
    second = run_function_sync(tasks.append_and_count, host=host, args=(counter,), job_id=job_id)
    assert first == second == 1
    assert Path(counter).read_text() == "ran\n"
    assert _job_ids(host).count(job_id) == 1


def test_job_id_reused_for_another_function_is_rejected(host: LocalHost) -> None:
    job_id = deterministic_job_id("run", "other-step", uuid.uuid4().hex)
    assert run_function_sync(tasks.add, host=host, args=(1, 2), job_id=job_id) == 3
    with pytest.raises(InvalidRequestError, match=job_id):
        run_function_sync(tasks.square, host=host, args=(3,), job_id=job_id)


@pytest.mark.parametrize("job_id", ["", "has space", "a/b", "-leading-dash", "x" * 129, 12])
def test_invalid_job_id_is_rejected(host: LocalHost, job_id: object) -> None:
    before = _job_ids(host)
    with pytest.raises(InvalidRequestError, match="job_id"):
        run_function_sync(tasks.add, host=host, args=(1, 2), job_id=job_id)
    assert _job_ids(host) == before


# -- output -----------------------------------------------------------------------------------


def test_remote_output_reaches_the_meadow_logger(
    host: LocalHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meadow")
    tag = uuid.uuid4().hex
    job_id = f"job-output-{tag}"
    assert run_function_sync(tasks.chatty, host=host, args=(tag,), job_id=job_id) == tag

    expected = [f"stdout line {tag}", f"stderr line {tag}", f"c-level line {tag}"]
    records = [r for r in caplog.records if tag in r.getMessage()]
    messages = [r.getMessage() for r in records]
    for line in expected:
        assert any(line in m for m in messages), f"{line!r} not logged; got {messages}"
    for record in records:
        assert record.name == "meadow" or record.name.startswith("meadow.")
        assert record.meadow_task_id == 0  # type: ignore[attr-defined]
        assert record.meadow_job_id == job_id  # type: ignore[attr-defined]

    log = read_task_log_sync(job_id, 0, host)
    for line in expected:
        assert line in log
    assert "MEADOW-END" not in log  # the worker's end marker is not part of the output


def test_output_of_one_call_does_not_leak_into_the_next(host: LocalHost) -> None:
    first, second = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    job_a, job_b = f"job-a-{first}", f"job-b-{second}"
    run_function_sync(tasks.chatty, host=host, args=(first,), job_id=job_a)
    run_function_sync(tasks.chatty, host=host, args=(second,), job_id=job_b)
    log_a, log_b = read_task_log_sync(job_a, 0, host), read_task_log_sync(job_b, 0, host)
    assert first in log_a and second not in log_a
    assert second in log_b and first not in log_b


# -- timeouts ---------------------------------------------------------------------------------


def test_timeout_kills_a_slow_function(host: LocalHost) -> None:
    start = time.monotonic()
    with pytest.raises(TaskException) as info:
        run_function_sync(
            tasks.sleep_then_return, host=host, args=(30, "never"), timeout_seconds=0.5
        )
    elapsed = time.monotonic() - start
    assert info.value.remote_type == "meadow.TaskTimeout"
    assert elapsed < 10, f"the timeout took {elapsed:.1f}s to fire"
    # The host still works after killing the worker.
    assert run_function_sync(tasks.add, host=host, args=(2, 2)) == 4


# -- a whole program ----------------------------------------------------------------------------

_PROGRAM = """
import asyncio, sys
from meadow_core import LocalHost, run_command, run_function, run_function_sync

host = LocalHost(home=sys.argv[1], idle_timeout=30)

async def main():
    value = await run_function(abs, host=host, args=(-5,))
    completion = await run_command(["true"], host=host)
    return value, completion.return_code

print(asyncio.run(main()))
print(asyncio.run(main()))
print(run_function_sync(abs, host=host, args=(-7,)))
host.shutdown()
"""


def test_a_program_using_the_api_exits_cleanly(tmp_path: Path) -> None:
    """No warnings or tracebacks at exit, and no agent left running after shutdown()."""
    import subprocess
    import sys

    home = tmp_path / "home"
    repo_root = Path(__file__).resolve().parents[2]
    process = subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repo_root)},
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.split() == ["(5,", "0)", "(5,", "0)", "7"]
    for noise in ("Traceback", "Task was destroyed", "Event loop is closed", "Error"):
        assert noise not in process.stderr, process.stderr
    time.sleep(0.5)
    with managed_host(home) as after:
        assert after.agent_pid() is None, "an agent was started again after shutdown()"


def test_timeout_stops_a_function_that_runs_a_subprocess(host: LocalHost) -> None:
    """The timeout ends the call promptly and the task's child process does not run on."""
    argv = ["sleep", f"12.{uuid.uuid4().int % 10**6:06d}"]
    start = time.monotonic()
    try:
        with pytest.raises(TaskException) as info:
            run_function_sync(tasks.run_child, host=host, args=(argv,), timeout_seconds=0.5)
        elapsed = time.monotonic() - start
        assert info.value.remote_type == "meadow.TaskTimeout"
        assert elapsed < 8, f"the 0.5 s timeout was reported after {elapsed:.1f}s"
        left = tasks.wait_no_processes(argv)
        assert left == [], f"the timed-out task's child {argv} still runs"
    finally:
        tasks.kill_all(tasks.processes_with_cmdline(argv))
