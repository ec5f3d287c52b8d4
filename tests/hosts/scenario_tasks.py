"""What the conformance scenarios run on a host: plain functions, imported by reference
(the deployment ships this checkout, or LocalHost uses it in place).

Nothing here may rely on a file the caller can read, or on what an earlier attempt left
on its machine: on a cloud host the task runs elsewhere, a retry maybe on another
machine.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import time
import uuid
from typing import Any

from meadow_core import current_task

_PR_SET_NAME = 15


def add(a: int, b: int, *, times: int = 1) -> int:
    return (a + b) * times


def square(x: int) -> int:
    return x * x


def fail_on(x: int) -> int:
    if x in (1, 3):
        raise ValueError(f"bad item {x}")
    return x * 100


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def chatty(tag: str) -> str:
    """Writes to stdout, stderr, and the file descriptor itself (as C code would)."""
    print(f"stdout line {tag}", flush=True)
    print(f"stderr line {tag}", file=sys.stderr, flush=True)
    os.write(1, f"fd line {tag}\n".encode())
    return tag


def chatty_item(item: tuple[str, int]) -> int:
    tag, index = item
    print(f"item {index} of {tag}", flush=True)
    return index


def flaky(item: tuple[int, bool]) -> tuple[int, int]:
    """Fails its first attempt when ``fail_first``; returns x * 10 and the attempt the
    task says it is on (``current_task()``, which must agree with the caller's count)."""
    x, fail_first = item
    context = current_task()
    assert context is not None, "not running in a Meadow task"
    if fail_first and context.attempt == 1:
        raise RuntimeError(f"transient failure of item {x}")
    return x * 10, context.attempt


def allocate(item: tuple[int, float]) -> int:
    """Hold ``megabytes`` of touched memory for ``seconds``; return the size."""
    megabytes, seconds = item
    block = bytearray(b"\x01") * (megabytes * 2**20)
    time.sleep(seconds)
    return len(block) // 2**20


def mark_process(marker: str) -> None:
    """Name this process ``marker`` (``/proc/<pid>/comm``), so a test can find the
    process that runs a task from outside, whatever machine or namespace it is in."""
    assert len(marker) < 16, "the kernel keeps 15 bytes of a process name"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NAME, marker.encode(), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME) failed")


def marked_sleep(item: tuple[str, float]) -> tuple[str, int]:
    """Mark the process with the item's marker, sleep; return the marker and attempt."""
    marker, seconds = item
    mark_process(marker)
    print(f"{marker} started", flush=True)
    time.sleep(seconds)
    context = current_task()
    return marker, context.attempt if context else 0


def sleep_then_return(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def once_token(seconds: float) -> str:
    """A value no second run could repeat: proves a job ran once."""
    time.sleep(seconds)
    return uuid.uuid4().hex


def digest_and_reverse(data: bytes) -> tuple[str, bytes]:
    """The argument's digest as the task saw it, and a result as large as the argument."""
    return hashlib.sha256(data).hexdigest(), data[::-1]


def installed_version(distribution: str) -> tuple[str, str]:
    """The version of ``distribution`` the task imports, and the interpreter's prefix."""
    from importlib import metadata

    return metadata.version(distribution), sys.prefix
