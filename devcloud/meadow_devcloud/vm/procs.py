"""Process bookkeeping for the dev cloud: nothing it starts may outlive it.

Children get a parent-death signal so a crashed simulator takes its VMs with it, and
every pid is recorded with its start time so a later `stop` can reap by state dir
without ever killing an unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from typing import TypedDict

import psutil

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that spawned it exits."""
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


class PidRecord(TypedDict):
    pid: int
    started: float


def record(pid: int) -> PidRecord:
    try:
        return {"pid": pid, "started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return {"pid": pid, "started": 0.0}


def same_process(entry: PidRecord) -> psutil.Process | None:
    """The recorded process if it still runs (and is not a pid reuse)."""
    try:
        process = psutil.Process(entry["pid"])
        if abs(process.create_time() - entry["started"]) > 0.05:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None


def kill_recorded(entry: PidRecord) -> None:
    process = same_process(entry)
    if process is not None:
        with contextlib.suppress(psutil.Error):
            process.kill()


def netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_netns(path: str) -> list[int]:
    """Live processes whose network namespace is the one bound at `path` (like `ip netns pids`)."""
    inode = netns_inode(path)
    if inode is None:
        return []
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/net").st_ino == inode:
                found.append(int(name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def kill_netns_processes(path: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL everything in the namespace until nothing is left; returns survivors."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [pid for pid in pids_in_netns(path) if not _is_zombie(pid)]
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True
