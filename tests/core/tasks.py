"""Functions that Meadow workers run by reference, plus the host helper the tests share.

The workers get the caller's ``sys.path``, which holds ``tests/core`` (pytest puts it
there because the directory has no ``__init__.py``), so ``import tasks`` works remotely.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from meadow_core import LocalHost
from meadow_core._portal import portal

# -- the host fixture's body ------------------------------------------------------------


def _pid_running(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait for every pid to exit; return the ones still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _pid_running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _pid_running(p)]
    return alive


@contextlib.contextmanager
def managed_host(home: Path, **settings: Any) -> Iterator[LocalHost]:
    """A LocalHost on its own home; on exit its agent and every worker must be gone."""
    settings.setdefault("idle_timeout", 30)
    host = LocalHost(home=home, **settings)
    try:
        yield host
    finally:
        _shut_down_and_check(host)


def _shut_down_and_check(host: LocalHost) -> None:
    pids: list[int] = []
    agent = host.agent_pid()
    if agent is not None:
        pids = [agent, *portal.call(host.agent_status())["workers"]]
    host.shutdown()
    leftover = wait_until_gone(pids)
    assert not leftover, f"processes of the agent {agent} still run after shutdown: {leftover}"


# -- plain functions ----------------------------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def echo_call(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def identity(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


def getpid(_: Any = None) -> int:
    return os.getpid()


def sleep_then_return(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def interval(arg: tuple[int, float]) -> tuple[int, float, float]:
    """Sleep ``arg[1]`` seconds; return (index, start, end) wall-clock times."""
    index, seconds = arg
    start = time.time()
    time.sleep(seconds)
    return index, start, time.time()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = best = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start (+1)
        current += change
        best = max(best, current)
    return best


def env_var(name: str) -> str | None:
    return os.environ.get(name)


# -- output ------------------------------------------------------------------------------


def chatty(tag: str) -> str:
    print(f"stdout line {tag}")
    print(f"stderr line {tag}", file=sys.stderr)
    sys.stdout.flush()
    os.write(1, f"c-level line {tag}\n".encode())
    return tag


# -- counters and state kept in files ------------------------------------------------------


def append_and_count(path: str) -> int:
    """Append a line to ``path``; return how many lines it has now (runs are visible)."""
    with open(path, "a") as f:
        f.write("ran\n")
    with open(path) as f:
        return len(f.readlines())


def _bump(directory: str, key: object) -> int:
    """Count calls per key in a file under ``directory``; return this call's number."""
    path = Path(directory) / f"count-{key}"
    with open(path, "a") as f:
        f.write("x")
    return len(path.read_text())


def fail_first_attempt(arg: tuple[str, int, bool]) -> int:
    """Raise on the first call for this key when asked to, succeed afterwards."""
    directory, key, flaky = arg
    calls = _bump(directory, key)
    if flaky and calls == 1:
        raise RuntimeError(f"transient failure of task {key}")
    return key * 10


def always_fail(x: int) -> int:
    raise RuntimeError(f"task {x} always fails")


def fail_some(x: int) -> int:
    if x in (1, 3):
        raise ValueError(f"bad item {x}")
    return x * 100


def sigkill_first_attempt(arg: tuple[str, int, bool]) -> int:
    """SIGKILL our own worker on the first call for this key (when asked to)."""
    directory, key, crash = arg
    calls = _bump(directory, key)
    if crash and calls == 1:
        (Path(directory) / f"killed-pid-{key}").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def allocate(arg: tuple[int, float]) -> int:
    """Hold ``megabytes`` of touched memory for ``seconds``; return the size."""
    megabytes, seconds = arg
    block = bytearray(b"\x01") * (megabytes * 2**20)  # written, so really resident
    time.sleep(seconds)
    return len(block) // 2**20


def maybe_slow(arg: tuple[int, float]) -> int:
    index, seconds = arg
    time.sleep(seconds)
    return index


_calls_in_this_process = 0
_module_object = object()


def count_calls(_: Any = None) -> tuple[int, int, int]:
    """(pid, calls of this function in this process so far, id of a module-level object)."""
    global _calls_in_this_process
    _calls_in_this_process += 1
    return os.getpid(), _calls_in_this_process, id(_module_object)


# -- tasks that start processes of their own ---------------------------------------------------


def run_child(argv: list[str]) -> int:
    """Run a child process to completion; return its exit code."""
    import subprocess

    return subprocess.run(argv, check=False).returncode


def processes_with_cmdline(argv: list[str]) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line is exactly ``argv``."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["cmdline"] == argv and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def wait_no_processes(argv: list[str], timeout: float = 5.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = processes_with_cmdline(argv)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_with_cmdline(argv)
    return left


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


def sleep_then_return_one(seconds: float) -> int:
    time.sleep(seconds)
    return 1


def describe_current_task(payload: bytes) -> tuple[str, int, int, bytes]:
    """Write ``payload`` into the host's store from inside a task; report the context."""
    from meadow_core import current_task

    context = current_task()
    assert context is not None
    key = f"adapter-outputs/{context.job_id}/{context.task_id}"
    context.store.put(key, payload)
    return context.job_id, context.task_id, context.attempt, context.store.get(key)
