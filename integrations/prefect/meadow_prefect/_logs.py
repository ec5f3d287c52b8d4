"""Relay remote output, log records and events into the Prefect task run that launched
the Meadow job.

Meadow emits each remote output line as a record of the ``meadow`` logger carrying
``meadow_job_id`` and ``meadow_task_id``. The remote side never talks to Prefect, so the
flow process re-logs those lines through the task run's own Prefect logger
(``meadow_core.route_logs``, which consumes them, so each shows once); Prefect's API log
handler then ships them to the server under that task run's id. A line starting with
``_remote.MARKER`` is a Prefect log record (``get_run_logger()``) or event the task body
produced: the record is logged at its own level, the event sent by this process's
events worker in the task run's context, as Prefect's process pool forwards them.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from meadow_prefect._remote import MARKER


@dataclasses.dataclass(frozen=True)
class TaskRunSink:
    """Where one task run's remote output goes: its logger, and the context (the
    engine thread's, inside the task run) its events are sent in."""

    logger: Any
    context: contextvars.Context


def into_task_runs(sinks: Mapping[int, TaskRunSink]) -> Callable[[logging.LogRecord], None]:
    """A route for a Meadow job: the lines of Meadow task N go to ``sinks[N]``.

    In a batched ``.map`` each element is its own task run; the ``[task N] `` prefix is
    dropped.
    """

    def relay(record: logging.LogRecord) -> None:
        task_id = getattr(record, "meadow_task_id", None)
        sink = sinks.get(task_id) if isinstance(task_id, int) else None
        if sink is None:
            return
        message = record.getMessage().removeprefix(f"[task {task_id}] ")
        if message.startswith(MARKER):
            _forward(sink, message[len(MARKER) :])
        else:
            sink.logger.log(record.levelno, "%s", message)

    return relay


def _forward(sink: TaskRunSink, line: str) -> None:
    try:
        item = json.loads(line)
        kind, data = item["kind"], item["data"]
    except (ValueError, KeyError, TypeError):
        sink.logger.warning("unreadable Prefect record from the Meadow worker: %s", line[:200])
        return
    if kind == "log":
        sink.logger.log(int(data.get("level", logging.INFO)), "%s", data.get("message", ""))
    elif kind == "event":
        from prefect.events import Event
        from prefect.events.worker import EventsWorker

        event = Event.model_validate(data)
        sink.context.run(EventsWorker.instance().send, event)


@functools.cache
def show_meadow_logs() -> None:
    """Let Meadow's own INFO lines (environment builds, image pulls) reach the flow
    process's handlers, as Prefect's INFO lines do; once, when the first task runs.

    Prefect's ``dictConfig`` may have disabled the ``meadow`` logger if it existed
    before Prefect configured logging.
    """
    meadow_logger = logging.getLogger("meadow")
    if meadow_logger.level == logging.NOTSET or meadow_logger.level > logging.INFO:
        meadow_logger.setLevel(logging.INFO)
    meadow_logger.disabled = False
