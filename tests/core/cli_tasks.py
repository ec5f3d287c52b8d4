"""Functions the CLI tests run by 'module:function' reference."""

from __future__ import annotations

import time


def add(a: int, b: int) -> int:
    print(f"adding {a} and {b}")
    return a + b


def square(x: int) -> int:
    return x * x


def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two is not allowed")
    return x


def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"
