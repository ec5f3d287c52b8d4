"""Relay remote log records into the Prefect task run that launched the Meadow job.

Meadow emits each remote output line as a record of the ``meadow`` logger carrying
``meadow_job_id`` and ``meadow_task_id``. The remote side never talks to Prefect, so the
flow process re-logs those lines through the task run's own Prefect logger; Prefect's
API log handler then ships them to the server under that task run's id.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

_LoggerLike = logging.Logger | logging.LoggerAdapter[Any]


class _Relay(logging.Filter):
    """A filter on the ``meadow`` logger that re-logs a routed record in its task run.

    A filter rather than a handler, so a relayed record is consumed: it shows once,
    under the task run's name, instead of a second time as a plain ``meadow`` line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[tuple[str, int | None], _LoggerLike] = {}
        self._routes_lock = threading.Lock()

    def add(self, job_id: str, task_id: int | None, logger: _LoggerLike) -> None:
        with self._routes_lock:
            self._routes[(job_id, task_id)] = logger

    def remove(self, job_id: str, task_id: int | None) -> None:
        with self._routes_lock:
            self._routes.pop((job_id, task_id), None)

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "meadow_job_id", None)
        if job_id is None:
            return True
        task_id = getattr(record, "meadow_task_id", None)
        with self._routes_lock:
            target = self._routes.get((job_id, task_id))
            if target is None:
                target = self._routes.get((job_id, None))
        if target is None:
            return True
        message = record.getMessage()
        if task_id is not None:
            # Each map element is its own task run: its "[task N] " prefix says nothing.
            message = message.removeprefix(f"[task {task_id}] ")
        target.log(record.levelno, "%s", message)
        return False


_relay: _Relay | None = None
_install_lock = threading.Lock()


def relay() -> _Relay:
    """The process-wide relay, installed on the ``meadow`` logger on first use."""
    global _relay
    with _install_lock:
        if _relay is None:
            _relay = _Relay()
            meadow_logger = logging.getLogger("meadow")
            meadow_logger.addFilter(_relay)
            if meadow_logger.level == logging.NOTSET or meadow_logger.level > logging.INFO:
                meadow_logger.setLevel(logging.INFO)
            # Prefect's dictConfig may have disabled loggers that existed before it ran.
            meadow_logger.disabled = False
        return _relay
