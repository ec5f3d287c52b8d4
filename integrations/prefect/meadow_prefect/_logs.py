"""Relay remote log records into the Prefect task run that launched the Meadow job.

Meadow emits each remote output line as a record of the ``meadow`` logger carrying
``meadow_job_id`` and ``meadow_task_id``. The remote side never talks to Prefect, so the
flow process re-logs those lines through the task run's own Prefect logger
(``meadow_core.route_logs``, which consumes them, so each shows once); Prefect's API log
handler then ships them to the server under that task run's id.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any


def into_task_runs(loggers: Mapping[int, Any]) -> Callable[[logging.LogRecord], None]:
    """A route for a batched ``.map`` job: each element's lines go to its own task run.

    ``loggers`` maps a Meadow task id (the element's place in the batch) to its task
    run's logger. The ``[task N] `` prefix is dropped: each element is its own task run.
    """

    def relay(record: logging.LogRecord) -> None:
        task_id = getattr(record, "meadow_task_id", None)
        logger = loggers.get(task_id) if isinstance(task_id, int) else None
        if logger is not None:
            message = record.getMessage().removeprefix(f"[task {task_id}] ")
            logger.log(record.levelno, "%s", message)

    return relay


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
