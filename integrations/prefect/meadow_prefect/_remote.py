"""What runs on the Meadow worker: plain function calls, nothing of Prefect.

Kept free of Prefect imports (the package ``__init__`` loads lazily) so a worker that
unpickles these trampolines imports only this small module.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; an async task's coroutine is run to completion here."""
    value = fn(*args, **kwargs)
    if inspect.isawaitable(value):
        return asyncio.run(_await(value))
    return value


def apply(fn: Callable[..., Any], item: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    """One element of a batched ``.map``: ``item`` is ``(args, kwargs)``."""
    args, kwargs = item
    return call(fn, *args, **kwargs)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def call_in_context(
    context: dict[str, Any], fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Call ``fn`` inside the caller's Prefect flow run context (``nested=True`` only).

    Lets the task body submit tasks of its own; those talk to the Prefect API from here,
    so this mode needs the API reachable from the remote side.
    """
    from prefect.context import hydrated_context

    with hydrated_context(context):
        return call(fn, *args, **kwargs)
