"""Routing remote output somewhere else: one job's lines into an orchestrator's step log.

Meadow hands each line a task prints to the ``meadow`` logger as an INFO record (a
retry notice is a WARNING) carrying ``meadow_job_id``, ``meadow_task_id`` and
``meadow_attempt``; in a map the message starts with ``[task N] ``. ``route_logs``
sends the records of chosen jobs to a logger or a callable instead, for as long as a
``with`` block runs::

    with meadow_core.route_logs(job_id, step_logger):
        meadow_core.run_function_sync(step, job_id=job_id)

A routed record is consumed: it shows once, where it was routed, not a second time
through the ``meadow`` logger's handlers. A route receives its records whatever the
``meadow`` logger's level, and even if ``logging.config.dictConfig`` disabled it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Collection, Iterator
from typing import Any

#: The logger remote output goes to; its ``meadow.*`` children are Meadow's own logs.
REMOTE_LOGGER = "meadow"

#: Which records a route takes: a job id, job ids, or a predicate on the record.
JobSelector = str | Collection[str] | Callable[[logging.LogRecord], bool]
#: Where a route sends them: a logger (the record's level and message) or a callable
#: (the record itself).
LogTarget = logging.Logger | logging.LoggerAdapter[Any] | Callable[[logging.LogRecord], object]


@dataclasses.dataclass(frozen=True, eq=False)
class _Route:
    selects: Callable[[logging.LogRecord], bool]
    send: Callable[[logging.LogRecord], object]


def _selector(jobs: JobSelector) -> Callable[[logging.LogRecord], bool]:
    if isinstance(jobs, str):
        return lambda record: getattr(record, "meadow_job_id", None) == jobs
    if callable(jobs):
        return jobs
    job_ids = frozenset(jobs)
    return lambda record: getattr(record, "meadow_job_id", None) in job_ids


def _sender(target: LogTarget) -> Callable[[logging.LogRecord], object]:
    if isinstance(target, logging.Logger | logging.LoggerAdapter):
        logger = target
        return lambda record: logger.log(record.levelno, "%s", record.getMessage())
    if callable(target):
        return target
    raise TypeError(f"route_logs: send records to a logger or a callable, not {target!r}")


# Routes are replaced, never changed in place, so delivering from one thread while
# another adds or ends a route needs no lock; the lock only orders the replacements.
_routes: tuple[_Route, ...] = ()
_routes_lock = threading.Lock()


def routing() -> bool:
    """Whether any route is open (cheap: the emitter asks before building a record)."""
    return bool(_routes)


def deliver(record: logging.LogRecord) -> bool:
    """Send ``record`` to every open route that selects it; whether one did.

    A target that raises is reported on stderr the way ``logging`` reports a failing
    handler, and never breaks the code that emitted the record.
    """
    if getattr(record, "meadow_job_id", None) is None:
        return False  # only remote output is routed
    taken = False
    for route in _routes:
        try:
            if route.selects(record):
                taken = True
                route.send(record)
        except Exception:
            if logging.raiseExceptions:
                sys.stderr.write("--- Meadow: a log route failed ---\n")
                traceback.print_exc(file=sys.stderr)
    return taken


class _RouteFilter(logging.Filter):
    """On the ``meadow`` logger while a route is open: routed records stop here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not deliver(record)


_filter = _RouteFilter()


def _set_routes(routes: tuple[_Route, ...]) -> None:
    global _routes
    logger = logging.getLogger(REMOTE_LOGGER)
    # Filter lists are replaced, not mutated, for the same reason as the routes:
    # a thread logging at this moment iterates the old list to its end.
    if routes and _filter not in logger.filters:
        logger.filters = [*logger.filters, _filter]
    _routes = routes
    if not routes:
        logger.filters = [f for f in logger.filters if f is not _filter]


@contextlib.contextmanager
def route_logs(jobs: JobSelector, target: LogTarget) -> Iterator[None]:
    """Send the remote output of ``jobs`` to ``target`` while the block runs.

    ``jobs`` is a job id, a collection of job ids, or a predicate on the
    ``logging.LogRecord`` (which carries ``meadow_job_id``, ``meadow_task_id`` and
    ``meadow_attempt``). ``target`` is a logger or logger adapter, which gets each
    record's message at the record's level, or a callable, which gets the record.
    Routes may be nested and opened from several threads at once; a record goes to
    every open route that selects it. Open the route before the job starts (or before
    ``wait_for_job`` reattaches) so that no line passes before it.
    """
    route = _Route(_selector(jobs), _sender(target))
    with _routes_lock:
        _set_routes((*_routes, route))
    try:
        yield
    finally:
        with _routes_lock:
            _set_routes(tuple(r for r in _routes if r is not route))
