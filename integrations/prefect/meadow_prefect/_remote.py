"""What runs on the Meadow worker around the task's function.

Travels by value (the remote side has Meadow's runtime but not ``meadow_prefect``) and
imports Prefect only when the remote environment has it. Three jobs:

- keep the exception the task raised, pickled, in the task's object store, so the flow
  process re-raises the task's own exception type (Meadow's protocol carries only its
  name, message and traceback);
- give the body the run context a task body has under Prefect's own runners
  (``get_run_logger()``, tags, ``prefect.runtime``) without the Prefect API: the
  context is built from what the flow process sent, and log records and events leave
  as marked lines on stdout, which Meadow relays to the flow process;
- with ``nested=True`` only, the whole flow run context (needs the API here).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

#: Object store keys of kept exceptions: ``<prefix>/<job id>/<task id>/<attempt>``.
EXCEPTION_PREFIX = "meadow-prefect/exceptions"
#: Starts a stdout line that carries a Prefect log record or event, not task output.
MARKER = "\x1emeadow-prefect "

#: Prefect's message when a task body submits without a flow run context.
_NO_RUNNER = "Unable to determine task runner"
NESTED_LIMITATION = (
    "MeadowTaskRunner runs a task's body on a Meadow host without the flow run, so the "
    "body cannot .submit() or .map() tasks of its own there; submit them from the flow, "
    "or use MeadowTaskRunner(nested=True), which ships the flow run context and needs "
    "the Prefect API reachable from the host"
)


def exception_key(job_id: str, task_id: int, attempt: int) -> str:
    return f"{EXCEPTION_PREFIX}/{job_id}/{task_id}/{attempt}"


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; an async task's coroutine is run to completion here."""
    value = fn(*args, **kwargs)
    if inspect.isawaitable(value):
        return asyncio.run(_await(value))
    return value


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run(
    task: bytes | None, run_info: bytes | None, fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """One task call: in the task run's context (when Prefect is installed here), its
    exception kept for the flow process. ``task`` and ``run_info`` come pickled, so
    that loading the call needs no Prefect."""
    try:
        with _task_run_context(task, run_info, fn, args, kwargs):
            try:
                return call(fn, *args, **kwargs)
            except RuntimeError as exc:
                if str(exc).startswith(_NO_RUNNER) and not _in_flow_run():
                    raise RuntimeError(NESTED_LIMITATION) from exc
                raise
    except BaseException as exc:
        _keep_exception(exc)
        raise


def apply(
    task: bytes | None,
    fn: Callable[..., Any],
    item: tuple[tuple[Any, ...], dict[str, Any], bytes | None],
) -> Any:
    """One element of a batched ``.map``: ``item`` is ``(args, kwargs, run info)``; each
    element is a task run of its own."""
    args, kwargs, run_info = item
    return run(task, run_info, fn, *args, **kwargs)


def call_in_context(
    context: dict[str, Any], fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Call ``fn`` inside the caller's Prefect flow run context (``nested=True`` only).

    Lets the task body submit tasks of its own; those talk to the Prefect API from here,
    so this mode needs the API reachable from the remote side.
    """
    try:
        from prefect.context import hydrated_context

        with hydrated_context(context):
            return call(fn, *args, **kwargs)
    except BaseException as exc:
        _keep_exception(exc)
        raise


def _keep_exception(exc: BaseException) -> None:
    """Store ``exc`` pickled where the flow process looks for it; best effort: if it
    cannot be pickled or stored, the flow process raises Meadow's ``TaskException``."""
    with contextlib.suppress(Exception):
        import cloudpickle

        from meadow_core import current_task

        task = current_task()
        if task is not None:
            blob = cloudpickle.dumps(exc)
            task.store.put(exception_key(task.job_id, task.task_id, task.attempt), blob)


def _in_flow_run() -> bool:
    with contextlib.suppress(ImportError):
        from prefect.context import FlowRunContext

        return FlowRunContext.get() is not None
    return False


# -- the task run's context without the API ------------------------------------------------


def _emit(kind: str, data: Any) -> None:
    """One marked line on the worker's stdout; Meadow relays it to the flow process."""
    stream = sys.__stdout__ or sys.stdout
    stream.write(MARKER + json.dumps({"kind": kind, "data": data}, default=str) + "\n")
    stream.flush()


class _ForwardingEvents:
    """Stands in for Prefect's ``EventsWorker`` while a task body runs: events leave
    through Meadow, and the flow process sends them on in the task run's context
    (which attaches the task run and flow run as related resources)."""

    def __init__(self, client_type: Any) -> None:
        self.client_type = client_type

    def instance(self, *_: Any, **__: Any) -> _ForwardingEvents:
        return self

    def send(self, event: Any) -> None:
        _emit("event", event.model_dump(mode="json"))


class _DropTaskRunRecords:
    """A console filter: this task run's Prefect records go to the flow process as
    records, not a second time as formatted stdout text."""

    def __init__(self, task_run_id: str) -> None:
        self.task_run_id = task_run_id

    def filter(self, record: Any) -> bool:
        return str(getattr(record, "task_run_id", "")) != self.task_run_id


@contextlib.contextmanager
def _task_run_context(
    pickled_task: bytes | None,
    pickled_info: bytes | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Iterator[None]:
    if pickled_task is None or pickled_info is None:
        yield
        return
    prefect_here = True
    try:
        import cloudpickle
        import prefect.events.utilities as event_utilities
        from prefect.context import hydrated_context
        from prefect.events.worker import ProcessPoolForwardingEventsClient
        from prefect.logging.configuration import ensure_logging_setup
        from prefect.logging.handlers import PrefectConsoleHandler, set_api_log_sink
        from prefect.utilities.callables import get_call_parameters

        run_info = cloudpickle.loads(pickled_info)
        task = cloudpickle.loads(pickled_task)
    except ImportError:  # no Prefect in this environment: a plain call
        prefect_here = False
    if not prefect_here:
        yield
        return

    import logging

    ensure_logging_setup()  # before looking for its console handlers
    context = dict(run_info["context"])
    task_run_context = dict(context["task_run_context"], task=task)
    with contextlib.suppress(Exception):
        task_run_context["parameters"] = get_call_parameters(fn, args, kwargs)
    context["task_run_context"] = task_run_context

    console_filter = _DropTaskRunRecords(run_info["task_run_id"])
    consoles = [
        handler
        for name in ("prefect", "prefect.task_runs", "")
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, PrefectConsoleHandler)
    ]
    # emit_event looks these up in its module: our stand-in replaces them while the
    # body runs (Prefect's EventsWorker would want the API to attach related resources).
    events_module: Any = event_utilities
    saved_events = (events_module.EventsWorker, events_module.should_emit_events)
    set_api_log_sink(lambda log: _emit("log", log))
    events_module.EventsWorker = _ForwardingEvents(ProcessPoolForwardingEventsClient)
    events_module.should_emit_events = lambda: True
    for handler in consoles:
        handler.addFilter(console_filter)
    try:
        with hydrated_context(context, client=_client()):
            yield
    finally:
        for handler in consoles:
            handler.removeFilter(console_filter)
        events_module.EventsWorker, events_module.should_emit_events = saved_events
        set_api_log_sink(None)


def _client() -> Any:
    """A client for the context; never used by the runner. Without an API address here,
    one whose address says so, rather than Prefect starting a server in the worker."""
    from prefect.client.orchestration import SyncPrefectClient, get_client
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return get_client(sync_client=True)
    return SyncPrefectClient("http://no-prefect-api-on-this-meadow-host.invalid/api")
