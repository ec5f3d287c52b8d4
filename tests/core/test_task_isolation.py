"""A task's processes end with it: nothing it started runs on after it, is charged to
the next task on the same warm worker, or outlives the agent."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from meadow_core import LocalHost, run_function_sync


def leave_processes_behind() -> list[int]:
    """A child in its own session, and a daemon whose parent already exited."""
    in_own_session = subprocess.Popen(["sleep", "300"], start_new_session=True)
    daemon = subprocess.run(
        ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
    )
    return [in_own_session.pid, int(daemon.stdout.strip())]


def worker_pid() -> int:
    import os

    return os.getpid()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LocalHost]:
    h = LocalHost(home=tmp_path / "home", idle_timeout=30)
    yield h
    h.shutdown()


def test_processes_a_task_leaves_end_with_it(host: LocalHost) -> None:
    pids = run_function_sync(leave_processes_behind, host)
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, [psutil.Process(p).cmdline() for p in pids]
        time.sleep(0.05)
    # The warm worker itself stays, and runs the next task.
    first = run_function_sync(worker_pid, host)
    assert run_function_sync(worker_pid, host) == first
