"""Following one job from the caller's side: its results as they are stored, once each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from meadow_core import logs, protocol
from meadow_core.errors import JobNotFoundError
from meadow_core.protocol import TaskOutcome

#: Remote output reaches the caller through this logger (and its ``meadow.*`` children).
remote_log = logging.getLogger(logs.REMOTE_LOGGER)


def _make_remote_output_visible() -> None:
    """Show remote output on stderr when the application configured no logging at all.

    Orchestrators and applications that configure logging get the records through their
    own handlers; a plain script would otherwise see nothing of what its tasks print.
    """
    if not remote_log.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        remote_log.addHandler(handler)
        if remote_log.level == logging.NOTSET:
            remote_log.setLevel(logging.INFO)


class JobWatch:
    """Collects a job's outcomes from a host's event channel.

    Results may be delivered more than once (a reconnect replays what is stored); the
    watch hands each task's final outcome to the caller exactly once.
    """

    def __init__(self, job_id: str, num_tasks: int, kind: str) -> None:
        self.job_id = job_id
        self.num_tasks = num_tasks
        self.kind = kind
        self.final: dict[int, TaskOutcome] = {}
        self.state: str | None = None
        self._events: asyncio.Queue[TaskOutcome | None] = asyncio.Queue()
        self._unknown = False
        self._error: Exception | None = None
        self._delivered = 0
        _make_remote_output_visible()

    # Called by the host's channel -------------------------------------------------

    def on_result(self, outcome: TaskOutcome) -> None:
        if not outcome.final:
            error = outcome.error or ["?", "", ""]
            self._emit(
                logging.WARNING,
                self._extra(outcome.task_id, outcome.attempt),
                "job %s task %d attempt %d %s (%s: %s); retrying",
                self.job_id,
                outcome.task_id,
                outcome.attempt,
                outcome.outcome,
                error[0],
                error[1],
            )
            return
        if outcome.task_id in self.final:
            return
        self.final[outcome.task_id] = outcome
        self._events.put_nowait(outcome)

    def on_done(self, state: str) -> None:
        self.state = state
        self._events.put_nowait(None)

    def on_error(self, error: Exception) -> None:
        """The channel to the host failed for good: the waiting caller gets ``error``."""
        self._error = error
        self._events.put_nowait(None)

    def on_unknown(self) -> None:
        self._unknown = True
        self._events.put_nowait(None)

    def on_log(self, task_id: int, attempt: int, lines: list[str]) -> None:
        prefix = f"[task {task_id}] " if self.kind == "map" else ""
        extra = self._extra(task_id, attempt)
        for line in lines:
            self._emit(logging.INFO, extra, "%s%s", prefix, line)

    def _extra(self, task_id: int, attempt: int) -> dict[str, Any]:
        return {"meadow_job_id": self.job_id, "meadow_task_id": task_id, "meadow_attempt": attempt}

    def _emit(self, level: int, extra: dict[str, Any], message: str, *args: object) -> None:
        """A record of the ``meadow`` logger, or for a route only when the logger drops it."""
        if remote_log.isEnabledFor(level):
            remote_log.log(level, message, *args, extra=extra, stacklevel=2)
        elif logs.routing():
            # The logger's level (or dictConfig) drops it, but a route may want it.
            record = remote_log.makeRecord(
                remote_log.name, level, __file__, 0, message, args, None, extra=extra
            )
            logs.deliver(record)

    # Used by the API ----------------------------------------------------------------

    @property
    def all_delivered(self) -> bool:
        """Every task's final outcome has been handed to the caller."""
        return self._delivered >= self.num_tasks

    @property
    def finished(self) -> bool:
        return self.all_delivered or self.state in protocol.TERMINAL_JOB_STATES

    async def outcomes(self) -> AsyncIterator[TaskOutcome]:
        """Final outcomes as they arrive, until every task has one."""
        while not self.all_delivered:
            event = await self._events.get()
            if event is not None:
                self._delivered += 1
                yield event
                continue
            if self._error is not None:
                raise self._error
            if self._unknown:
                raise JobNotFoundError(f"job {self.job_id} is not known to this host")
            if self.state in protocol.TERMINAL_JOB_STATES and self._events.empty():
                # Every final outcome is replayed before job_done, so none is missing.
                return
