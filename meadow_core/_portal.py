"""Run Meadow's coroutines from synchronous code, in any thread.

One daemon thread per process runs an event loop; synchronous API calls submit their
coroutine to it and block. This works from plain scripts and from a thread while
another event loop runs in it (Airflow, Prefect and Dagster do both), and keeps the
agent connection warm between calls.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import queue
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

_T = TypeVar("_T")
_DONE = object()


class _Portal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # new, or inherited by fork
                self._pid = os.getpid()
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="meadow-portal", daemon=True
                )
                self._thread.start()
                atexit.register(self.close)
            return self._loop

    def close(self) -> None:
        """Cancel what still runs on the portal loop and stop it (at interpreter exit)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._pid != os.getpid() or not loop.is_running():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self._loop = None

    def in_portal_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        if self.in_portal_thread():
            coroutine.close()
            raise RuntimeError("a synchronous Meadow call was made from Meadow's own loop")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop())
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt in the caller: cancel the coroutine (it cancels the job).
            if not future.done():
                future.cancel()
                with contextlib.suppress(BaseException):
                    future.result(timeout=10)
            raise

    def iterate(self, iterable: AsyncIterator[_T]) -> Iterator[_T]:
        """Consume an async iterator on the portal loop, yielding its items here."""
        items: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                async for item in iterable:
                    items.put((item, None))
            except BaseException as exc:
                items.put((_DONE, exc))
                return
            items.put((_DONE, None))

        future = asyncio.run_coroutine_threadsafe(pump(), self.loop())
        try:
            while True:
                item, error = items.get()
                if item is _DONE:
                    if error is not None:
                        raise error
                    return
                yield item
        finally:
            if not future.done():
                future.cancel()


portal = _Portal()
