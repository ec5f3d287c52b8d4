"""The agent's life: started on demand, reused, idle exit, crashes of caller and agent,
cancellation. Each test uses its own home, so each has its own agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import filelock
import psutil
import pytest

from meadow_core import (
    AgentUnavailableError,
    LocalHost,
    RunMapTasksFailedException,
    TaskException,
    cancel_job_sync,
    deterministic_job_id,
    get_job,
    get_job_sync,
    run_function,
    run_function_sync,
    run_map,
    run_map_as_completed_sync,
    run_map_sync,
    wait_for_job,
    wait_for_job_sync,
)
from meadow_core.hosts.local import _Connection


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def worker_identity(_: object = None) -> tuple[int, int]:
    return os.getpid(), os.getppid()


def sleep_and_mark(args: tuple[str, int, float]) -> int:
    directory, index, seconds = args
    Path(directory, f"started-{index}").touch()
    time.sleep(seconds)
    Path(directory, f"done-{index}").touch()
    return index


def _assert_lock_free(host: LocalHost) -> None:
    lock = filelock.FileLock(host.place.agent_lock_path)
    lock.acquire(timeout=0)
    lock.release()


@pytest.fixture
def host(tmp_path: Path):  # type: ignore[no-untyped-def]
    h = LocalHost(home=tmp_path / "home", idle_timeout=30)
    yield h
    h.shutdown()


def test_agent_is_started_on_demand_and_reused(host: LocalHost) -> None:
    assert host.agent_pid() is None
    worker_pid, worker_parent = run_function_sync(worker_identity, host)
    agent = host.agent_pid()
    assert agent is not None and worker_parent == agent
    # A second call reuses both the agent and the warm worker.
    assert run_function_sync(worker_identity, host) == (worker_pid, agent)
    assert host.agent_pid() == agent


def test_agent_exits_after_idle_timeout_leaving_nothing(tmp_path: Path) -> None:
    host = LocalHost(home=tmp_path / "home", idle_timeout=1.0)
    worker_pid, agent_pid = run_function_sync(worker_identity, host)
    _wait_until(lambda: not _alive(agent_pid), 15, "the idle agent to exit")
    _wait_until(lambda: not _alive(worker_pid), 5, "its worker to exit")
    assert host.agent_pid() is None
    # The agent lock is free again and no scratch files were left.
    _assert_lock_free(host)
    scratch = host.place.scratch_dir
    assert not scratch.exists() or not any(scratch.iterdir())
    # The next call simply starts a new agent.
    assert run_function_sync(worker_identity, host)[1] != agent_pid
    host.shutdown()


_CALLER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from meadow_core import LocalHost, run_map_sync
    from test_lifecycle import sleep_and_mark
    host = LocalHost(home={home!r}, idle_timeout=2)
    run_map_sync(sleep_and_mark, [({marks!r}, i, 0.3) for i in range(8)], host,
                 num_concurrent_tasks=2, job_id="killed-caller")
    """
)


def test_caller_killed_mid_map_loses_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    home, marks = tmp_path / "home", tmp_path / "marks"
    marks.mkdir()
    script = _CALLER.format(tests=str(Path(__file__).parent), home=str(home), marks=str(marks))
    caller = subprocess.Popen([sys.executable, "-c", script])
    try:
        _wait_until(lambda: (marks / "started-0").exists(), 30, "the map to start")
    finally:
        caller.send_signal(signal.SIGKILL)
        caller.wait()
    host = LocalHost(home=home, idle_timeout=2)
    agent_pid = host.agent_pid()
    assert agent_pid is not None
    # The agent finishes the queued work without the caller ...
    _wait_until(lambda: len(list(marks.glob("done-*"))) == 8, 30, "all tasks to finish")
    # ... then exits after its idle timeout, with its workers.
    _wait_until(lambda: not _alive(agent_pid), 15, "the agent to exit")
    _assert_lock_free(host)
    # The results were stored: a later caller collects them without rerunning anything.
    assert wait_for_job_sync("killed-caller", host) == list(range(8))
    assert len(list(marks.glob("started-*"))) == 8
    host.shutdown()


def test_agent_killed_mid_map_is_replaced_and_the_map_completes(
    host: LocalHost, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    handle = run_map_sync(
        sleep_and_mark,
        [(str(marks), i, 0.5) for i in range(4)],
        host,
        num_concurrent_tasks=2,
        wait_for_result=False,
    )
    _wait_until(lambda: (marks / "started-0").exists(), 30, "the map to start")
    agent_pid = host.agent_pid()
    assert agent_pid is not None
    workers = [p.pid for p in psutil.Process(agent_pid).children()]
    os.kill(agent_pid, signal.SIGKILL)
    # Workers die with their agent instead of running on as orphans.
    _wait_until(lambda: not any(_alive(w) for w in workers), 10, "the workers to die")
    # Waiting starts a new agent, which finds the unfinished tasks still queued.
    assert handle.wait_sync() == [0, 1, 2, 3]
    assert host.agent_pid() not in (None, agent_pid)


def test_cancelling_a_running_map_kills_its_tasks(host: LocalHost, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    handle = run_map_sync(
        sleep_and_mark,
        [(str(marks), i, 60) for i in range(6)],
        host,
        num_concurrent_tasks=2,
        wait_for_result=False,
    )
    _wait_until(lambda: len(list(marks.glob("started-*"))) == 2, 30, "two tasks to start")
    started = time.monotonic()
    cancel_job_sync(handle.job_id, host)
    with pytest.raises(RunMapTasksFailedException) as failure:
        handle.wait_sync()
    assert time.monotonic() - started < 10
    assert sorted(t.task_id for t in failure.value.failed_tasks) == list(range(6))
    assert {t.outcome for t in failure.value.failed_tasks} == {"cancelled"}
    assert get_job_sync(handle.job_id, host).state == "cancelled"
    assert not list(marks.glob("done-*"))
    # Only the two running tasks ever started; the queued ones were dropped.
    assert len(list(marks.glob("started-*"))) == 2


def test_cancelling_the_awaiting_coroutine_cancels_the_job(host: LocalHost) -> None:
    async def main() -> str:
        call = asyncio.ensure_future(run_function(time.sleep, host, args=(60,), job_id="c1"))
        while getattr(host.place.queue.get_job("c1"), "state", None) != "running":
            await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return "ok"

    assert asyncio.run(main()) == "ok"
    _wait_until(lambda: get_job_sync("c1", host).state == "cancelled", 10, "the job to cancel")
    with pytest.raises(TaskException, match="cancelled"):
        wait_for_job_sync("c1", host)


def test_a_host_survives_pickling(host: LocalHost) -> None:
    copy = pickle.loads(pickle.dumps(host))
    assert copy.place.home == host.place.home
    assert run_function_sync(worker_identity, copy)[1] == host.agent_pid() or host.agent_pid()


def test_a_caller_waiting_on_an_agent_that_cannot_come_back_gets_an_error(
    host: LocalHost, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    handle = run_function_sync(
        sleep_and_mark, host, args=((str(marks), 0, 60),), wait_for_result=False
    )
    _wait_until(lambda: (marks / "started-0").exists(), 30, "the task to start")

    async def wait_while_the_agent_dies() -> None:
        waiting = asyncio.ensure_future(handle.wait())
        await asyncio.sleep(0.5)
        agent_pid = host.agent_pid()
        assert agent_pid is not None
        # Break the home so no new agent can start, then kill the running one.
        host.place.agent_log_path.unlink()
        host.place.agent_log_path.mkdir()
        os.kill(agent_pid, signal.SIGKILL)
        with pytest.raises(AgentUnavailableError, match="could not restart"):
            await asyncio.wait_for(waiting, timeout=60)

    asyncio.run(wait_while_the_agent_dies())
    host.place.agent_log_path.rmdir()


def test_giving_up_on_waiting_for_an_existing_job_does_not_cancel_it(host: LocalHost) -> None:
    # A deferrable operator's trigger is cancelled whenever its triggerer restarts; the
    # job it waits on must run on.
    handle = run_function_sync(time.sleep, host, args=(2,), wait_for_result=False)

    async def wait_briefly() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wait_for_job(handle.job_id, host), timeout=0.5)

    asyncio.run(wait_briefly())
    assert get_job_sync(handle.job_id, host).state in ("queued", "running")
    assert handle.wait_sync() is None
    assert get_job_sync(handle.job_id, host).state == "succeeded"


def test_stopping_iteration_over_a_map_cancels_the_rest(host: LocalHost, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    results = run_map_as_completed_sync(
        sleep_and_mark,
        [(str(marks), i, 0.2 if i == 0 else 30) for i in range(4)],
        host,
        num_concurrent_tasks=2,
        job_id="abandoned-map",
    )
    first = next(iter(results))
    assert first.task_id == 0
    results.close()  # the caller stops iterating: nobody will collect the rest
    _wait_until(
        lambda: get_job_sync("abandoned-map", host).state == "cancelled", 15, "the map to cancel"
    )


def test_an_agent_of_another_version_retires_for_the_caller(host: LocalHost) -> None:
    import socket

    from meadow_core import protocol

    old_agent = run_function_sync(worker_identity, host)[1]
    # A caller of another Meadow version says hello (as after an upgrade).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(host.place.socket_address)
        conn.sendall(protocol.frame({"op": "hello", "version": "0.0.0-other"}))
    _wait_until(lambda: not _alive(old_agent), 10, "the outdated agent to retire")
    # The next call starts an agent of this version and runs normally.
    assert run_function_sync(worker_identity, host)[1] not in (None, old_agent)


def print_then_sleep(seconds: float) -> str:
    print("early line", flush=True)
    time.sleep(seconds)
    return "done"


def test_a_late_waiter_gets_the_output_so_far_and_can_skip_the_result(
    host: LocalHost, caplog: pytest.LogCaptureFixture
) -> None:
    handle = run_function_sync(print_then_sleep, host, args=(1.5,), wait_for_result=False)
    _wait_until(lambda: get_job_sync(handle.job_id, host).state == "running", 10, "the start")
    time.sleep(0.5)  # the line is printed before anybody watches
    with caplog.at_level(logging.INFO, logger="meadow"):
        record = wait_for_job_sync(handle.job_id, host, fetch_result=False)
    assert record.state == "succeeded" and record.num_done == 1
    assert any(
        r.getMessage() == "early line" and getattr(r, "meadow_job_id", None) == handle.job_id
        for r in caplog.records
    )


def test_deterministic_job_ids_are_stable_and_readable() -> None:
    first = deterministic_job_id("run-1", "step", 1, prefix="my dag.extract")
    assert first == deterministic_job_id("run-1", "step", 1, prefix="my dag.extract")
    assert first != deterministic_job_id("run-1", "step", 2, prefix="my dag.extract")
    assert first.startswith("my-dag.extract-")


def test_a_second_agent_for_a_served_home_exits_instead_of_waiting(host: LocalHost) -> None:
    first = run_function_sync(worker_identity, host)[1]
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "meadow_core.agent", "--home", str(host.place.home)],
        capture_output=True,
        timeout=30,
    )
    assert second.returncode == 0 and time.monotonic() - started < 10
    assert host.agent_pid() == first
    agents = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "meadow_core.agent" in " ".join(p.info["cmdline"] or [])
        and str(host.place.home) in " ".join(p.info["cmdline"] or [])
    ]
    assert [p.pid for p in agents] == [first]


def test_a_job_finished_before_its_doorbell_still_reaches_its_caller(
    host: LocalHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent rescans its queue every second and may run a fast job before the
    caller's "submitted" message arrives; that message must then replay the outcome."""
    run_function_sync(worker_identity, host)  # the agent is up and connected
    original = _Connection.ring

    async def late_ring(self: _Connection, job_id: str, created: bool) -> None:
        deadline = time.monotonic() + 10
        while (await get_job(job_id, host)).state != "succeeded":  # the rescan ran it
            assert time.monotonic() < deadline, "the agent never ran the job on its own"
            await asyncio.sleep(0.05)
        await original(self, job_id, created)

    monkeypatch.setattr(_Connection, "ring", late_ring)
    started = time.monotonic()
    assert run_function_sync(lambda: 6 * 7, host) == 42
    assert time.monotonic() - started < 10


def test_a_reattached_caller_that_gives_up_leaves_the_job_to_its_creator(
    host: LocalHost, tmp_path: Path
) -> None:
    """Ctrl-C in a second caller that reattached by the deterministic job id stops that
    caller's wait; only the creator's giving up cancels the job."""
    job_id = deterministic_job_id("run", "shared-step", 1)
    inputs = [(str(tmp_path), index, 0.3) for index in range(6)]

    async def scenario() -> list[int]:
        creator = asyncio.ensure_future(
            run_map(sleep_and_mark, inputs, host, job_id=job_id, num_concurrent_tasks=2)
        )
        while not list(tmp_path.glob("started-*")):
            await asyncio.sleep(0.02)
        follower = asyncio.ensure_future(
            run_map(sleep_and_mark, inputs, host, job_id=job_id, num_concurrent_tasks=2)
        )
        await asyncio.sleep(0.3)  # the follower is attached and waiting
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        return await asyncio.wait_for(creator, 60)

    assert asyncio.run(scenario()) == list(range(6))
    assert get_job_sync(job_id, host).state == "succeeded"
    assert len(list(tmp_path.glob("done-*"))) == 6, "every task ran to its end"
