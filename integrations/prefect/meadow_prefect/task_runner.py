"""``MeadowTaskRunner``: a Prefect 3 task runner whose task bodies run on a Meadow host.

Design (see ../README.md): Prefect's own task engine runs in the flow process, in a
thread per task run exactly as with ``ThreadPoolTaskRunner``, so task run states,
retries, caching, result persistence and events are all produced locally and never
depend on the remote machine reaching the Prefect API. Only the call of the task's
function crosses to Meadow (``run_function``; a ``.map`` is batched into one
``run_map`` job). The body runs in its task run's context rebuilt on the remote side
(``get_run_logger()``, tags, ``prefect.runtime.task_run``); remote output, Prefect log
records and events are relayed into the task run. A dead worker, agent or machine, or a
``KeyboardInterrupt``, becomes ``Crashed``, a cancelled job ``Cancelled``; the task's
own exception, or a timeout, ``Failed``, and ``.result()`` raises the task's own
exception with Meadow's (and the remote traceback) as its cause.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import copy
import dataclasses
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cloudpickle
from prefect.context import TagsContext, TaskRunContext, serialize_context
from prefect.futures import PrefectConcurrentFuture, PrefectFuture, PrefectFutureList
from prefect.logging import get_run_logger
from prefect.settings import get_current_settings
from prefect.states import Cancelled, Crashed, State, exception_to_crashed_state
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import Task
from prefect.utilities.asyncutils import run_coro_as_sync

from meadow_core import (
    AgentUnavailableError,
    Deployment,
    Host,
    Outcome,
    Resources,
    TaskException,
    TaskResult,
    cancel_job_sync,
    default_host,
    deterministic_job_id,
    host_to_config,
    route_logs,
    run_function_sync,
    run_map_as_completed_sync,
)
from meadow_prefect import _remote
from meadow_prefect._logs import TaskRunSink, into_task_runs, show_meadow_logs

# The trampolines travel by value: a built environment on the remote side has Meadow's
# runtime but not meadow_prefect.
cloudpickle.register_pickle_by_value(_remote)

#: Seconds a partly filled ``.map`` batch waits for more elements before it is sent, at
#: the least: a batch waits four times the longest gap between its arrivals so far (up
#: to ``MAP_LINGER_MAX_SECONDS``), so a loaded machine's slower engine threads do not
#: split one map into many jobs.
MAP_LINGER_SECONDS = 0.25
MAP_LINGER_MAX_SECONDS = 2.0


# -- per-task options -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Options:
    resources: Resources | None = None
    timeout_seconds: float | None = None


_current_options: contextvars.ContextVar[_Options | None] = contextvars.ContextVar(
    "meadow_prefect_options", default=None
)


@contextlib.contextmanager
def meadow_options(
    resources: Resources | None = None, timeout_seconds: float | None = None
) -> Iterator[None]:
    """Override the runner's resources or timeout for tasks submitted inside the block.

    Read when a task is submitted (``.submit``/``.map``/call), so it is the way to give
    one heavy step a bigger machine without a second runner. Tags work too:
    ``meadow:cpu=4``, ``meadow:memory_gb=16``, ``meadow:timeout=600``.
    """
    token = _current_options.set(_Options(resources, timeout_seconds))
    try:
        yield
    finally:
        _current_options.reset(token)


def _options_from_tags(tags: Iterable[str]) -> _Options:
    """``meadow:cpu=N``, ``meadow:memory_gb=N``, ``meadow:timeout=S`` task tags."""
    cpu: float | None = None
    memory: float | None = None
    timeout: float | None = None
    for tag in tags:
        if not tag.startswith("meadow:") or "=" not in tag:
            continue
        key, _, raw = tag[len("meadow:") :].partition("=")
        try:
            number = float(raw)
        except ValueError as exc:
            raise ValueError(f"task tag {tag!r}: {raw!r} is not a number") from exc
        if key == "cpu":
            cpu = number
        elif key in ("memory_gb", "memory"):
            memory = number
        elif key == "timeout":
            timeout = number
        else:
            raise ValueError(
                f"task tag {tag!r}: use meadow:cpu=, meadow:memory_gb= or meadow:timeout="
            )
    resources = Resources(logical_cpu=cpu, memory_gb=memory) if cpu or memory else None
    return _Options(resources, timeout)


# -- futures ------------------------------------------------------------------------------


class MeadowFuture(PrefectConcurrentFuture[Any]):
    """A ``PrefectConcurrentFuture`` whose ``cancel()`` also cancels the Meadow job."""

    def __init__(
        self,
        task_run_id: uuid.UUID,
        wrapped_future: concurrent.futures.Future[Any],
        runner: MeadowTaskRunner,
    ) -> None:
        super().__init__(task_run_id, wrapped_future)
        self._runner = runner

    def cancel(self) -> bool:
        """Cancel the task run: not started yet, it never runs; running, its job is killed."""
        if self._wrapped_future.cancel():
            return True
        job_id = self._runner._job_of_task_run.get(self.task_run_id)
        if job_id is None:
            return False
        self._runner._cancel_job(job_id)
        return True


# -- batching a .map into one run_map job ------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    task_run_id: uuid.UUID
    sink: TaskRunSink
    run_info: _RunInfo | None
    future: concurrent.futures.Future[Any] = dataclasses.field(
        default_factory=concurrent.futures.Future
    )


class _MapBatch:
    """Collects the first attempt of each element of one ``.map`` and sends them together.

    Prefect runs each element as its own task run; each engine thread calls in here
    instead of starting a job of its own. The batch is sent when every element still
    expected has called (cache hits and upstream failures never call, their futures'
    completion counts them out), or when no new call arrived for ``MAP_LINGER_SECONDS``.
    Calls arriving after a send start the next wave.
    """

    def __init__(self, runner: MeadowTaskRunner, fn: Callable[..., Any], options: _Options) -> None:
        self.runner = runner
        self.fn = fn
        self.options = options
        self.cond = threading.Condition()
        self.expected = 0
        self.sealed = False
        self.called: set[int] = set()
        self.settled: set[int] = set()
        self.pending: list[_Pending] = []
        self.last_arrival = time.monotonic()
        self.longest_gap = 0.0
        self.waves = 0
        self.thread: threading.Thread | None = None

    def add_element(self) -> int:
        with self.cond:
            self.expected += 1
            return self.expected - 1

    def seal(self) -> None:
        with self.cond:
            self.sealed = True
            self.cond.notify_all()
            if self.thread is None and self.expected:
                self.thread = threading.Thread(
                    target=self._flusher, name="meadow-prefect-map", daemon=True
                )
                self.thread.start()

    def element_finished(self, index: int) -> None:
        """An element's task run ended; if it never called, stop waiting for it."""
        with self.cond:
            self.settled.add(index)
            self.cond.notify_all()

    def call(self, index: int, pending: _Pending) -> Any:
        with self.cond:
            self.called.add(index)
            if self.pending:  # a gap within a wave (not the wait before the first call)
                self.longest_gap = max(self.longest_gap, time.monotonic() - self.last_arrival)
            self.pending.append(pending)
            self.last_arrival = time.monotonic()
            self.cond.notify_all()
        return pending.future.result()

    def _linger(self) -> float:
        return min(MAP_LINGER_MAX_SECONDS, max(MAP_LINGER_SECONDS, 4 * self.longest_gap))

    def _outstanding(self) -> int:
        """Elements that may still call: not called and not finished."""
        return self.expected - len(self.called | self.settled)

    def _flusher(self) -> None:
        while True:
            with self.cond:
                while True:
                    outstanding = self._outstanding()
                    if self.sealed and outstanding == 0 and not self.pending:
                        return
                    idle = time.monotonic() - self.last_arrival
                    linger = self._linger()
                    if self.pending and ((self.sealed and outstanding == 0) or idle >= linger):
                        wave, self.pending = self.pending, []
                        break
                    self.cond.wait(linger if self.pending else 1.0)
            self.waves += 1
            threading.Thread(
                target=self._send, args=(wave,), name="meadow-prefect-map-wave", daemon=True
            ).start()

    def _send(self, wave: list[_Pending]) -> None:
        runner = self.runner
        job_id = deterministic_job_id("prefect-map", *(str(p.task_run_id) for p in wave))
        for pending in wave:
            runner._job_of_task_run[pending.task_run_id] = job_id
        runner._active_jobs.add(job_id)
        delivered: set[int] = set()
        sinks = {index: pending.sink for index, pending in enumerate(wave)}
        # The task goes once per job, each element's own run context with its arguments.
        task = wave[0].run_info.task if wave[0].run_info is not None else None
        items = [
            (p.args, p.kwargs, p.run_info.context if p.run_info is not None else None) for p in wave
        ]
        try:
            with runner._credentials(), route_logs(job_id, into_task_runs(sinks)):
                results: Iterable[TaskResult[Any]] = run_map_as_completed_sync(
                    functools.partial(_remote.apply, task, self.fn),
                    items,
                    runner.host,
                    self.options.resources or runner.resources,
                    runner._deployment(),
                    job_id=job_id,
                    timeout_seconds=self.options.timeout_seconds or runner.timeout_seconds,
                )
                for result in results:
                    delivered.add(result.task_id)
                    future = wave[result.task_id].future
                    if result.is_success:
                        future.set_result(result.result)
                    else:
                        try:
                            result.result_or_raise()
                        except TaskException as exc:
                            future.set_exception(exc)
            missing = [p for i, p in enumerate(wave) if i not in delivered]
            for pending in missing:
                pending.future.set_exception(
                    AgentUnavailableError(f"Meadow map job {job_id} ended without this result")
                )
        except BaseException as exc:
            for index, pending in enumerate(wave):
                if index not in delivered and not pending.future.done():
                    pending.future.set_exception(exc)
        finally:
            runner._active_jobs.discard(job_id)


# -- the runner -------------------------------------------------------------------------------


class MeadowTaskRunner(ThreadPoolTaskRunner[Any]):
    """Run each task's function on a Meadow host; Prefect's engine stays in the flow process.

    ``host`` defaults to Meadow's default ``LocalHost``; ``resources`` and
    ``timeout_seconds`` apply to every task unless ``meadow_options(...)`` or
    ``meadow:*`` tags override them; ``deployment`` says what code and environment the
    remote side runs with. With ``forward_api_url`` the Prefect API URL (and key) is
    passed to the remote side, used only by tasks that themselves call Prefect there
    (nested submission); nothing else on the remote side needs it. ``nested=True``
    ships the flow run context with each call so a task body may ``.submit()`` tasks
    itself; it costs a Prefect import in each worker and needs the API reachable there.
    """

    def __init__(
        self,
        host: Host | None = None,
        resources: Resources | None = None,
        deployment: Deployment | None = None,
        *,
        timeout_seconds: float | None = None,
        max_workers: int | None = None,
        forward_api_url: bool = True,
        nested: bool = False,
        credentials: Any = None,
    ) -> None:
        super().__init__(max_workers=max_workers)
        if credentials is not None and (host is None or not host.takes_credentials):
            raise ValueError(
                f"credentials= needs a host that takes them; {type(host).__name__} does not"
            )
        self.host = host
        self.credentials = credentials
        self.resources = resources
        self.deployment = deployment
        self.timeout_seconds = timeout_seconds
        self.forward_api_url = forward_api_url
        self.nested = nested
        self._local = threading.local()
        self._active_jobs: set[str] = set()
        self._job_of_task_run: dict[uuid.UUID, str] = {}

    def duplicate(self) -> MeadowTaskRunner:
        return type(self)(
            host=self.host,
            resources=self.resources,
            deployment=self.deployment,
            timeout_seconds=self.timeout_seconds,
            max_workers=self._max_workers,
            forward_api_url=self.forward_api_url,
            nested=self.nested,
            credentials=self.credentials,
        )

    def __eq__(self, other: object) -> bool:
        """Runners that would run tasks alike: same settings, hosts with the same
        configuration (a host rebuilt from config is a new object), same pool size."""
        return (
            isinstance(other, MeadowTaskRunner)
            and _same_host(self.host, other.host)
            and self._max_workers == other._max_workers
            and self.resources == other.resources
            and self.deployment == other.deployment
            and self.timeout_seconds == other.timeout_seconds
            and self.forward_api_url == other.forward_api_url
            and self.nested == other.nested
            and self.credentials == other.credentials
        )

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # A started runner travels inside the flow run context (``nested=True``): what
        # runs here (threads, events, the executor) stays here.
        state.pop("_local", None)
        state.update(_executor=None, _cancel_events={}, _worker_thread_ids=set(), _started=False)
        state["_active_jobs"] = set()
        state["_job_of_task_run"] = {}
        state["credentials"] = None  # a cloud session stays in the flow's process
        return state

    def _credentials(self) -> contextlib.AbstractContextManager[object]:
        """The runner's credentials applied to its host for a block (a Prefect
        credentials block, a cloud SDK session or a mapping: the host decides)."""
        if self.host is None or self.credentials is None:
            return contextlib.nullcontext()
        return self.host.credentials(self.credentials)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    # -- submission ---------------------------------------------------------------------

    def submit(  # type: ignore[override]
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[Any]] | None = None,
    ) -> MeadowFuture:
        """Submit a task run; its engine runs here, its function call on the Meadow host."""
        options = self._options_for(task)
        batch: _MapBatch | None = getattr(self._local, "batch", None)
        index = batch.add_element() if batch is not None else None
        remote_task = self._remote_task(task, options, batch, index)
        future = super().submit(remote_task, parameters, wait_for, dependencies)
        meadow_future = MeadowFuture(future.task_run_id, future.wrapped_future, self)
        if batch is not None and index is not None:
            future.wrapped_future.add_done_callback(
                lambda _f, b=batch, i=index: b.element_finished(i)
            )
        return meadow_future

    def map(  # type: ignore[override]
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectFutureList[Any]:
        """Prefect's ``map`` (one task run per element), sent to Meadow as one ``run_map``."""
        batch = _MapBatch(self, task.fn, self._options_for(task))
        self._local.batch = batch
        try:
            futures = super().map(task, parameters, wait_for)
        finally:
            self._local.batch = None
            batch.seal()
        return futures

    def cancel_all(self) -> None:
        """Cancel every Meadow job still running, then let the thread pool wind down."""
        for job_id in list(self._active_jobs):
            self._cancel_job(job_id)
        super().cancel_all()

    # -- internals ----------------------------------------------------------------------

    def _cancel_job(self, job_id: str) -> None:
        with contextlib.suppress(Exception), self._credentials():
            cancel_job_sync(job_id, self.host)

    def _options_for(self, task: Task[Any, Any]) -> _Options:
        tagged = _options_from_tags(task.tags)
        given = _current_options.get() or _Options()
        return _Options(
            resources=given.resources or tagged.resources,
            timeout_seconds=given.timeout_seconds or tagged.timeout_seconds,
        )

    def _deployment(self) -> Deployment:
        """The user's deployment, plus the Prefect API address for nested Prefect calls."""
        deployment = self.deployment or Deployment()
        if not self.forward_api_url:
            return deployment
        settings = get_current_settings()
        extra: dict[str, str] = {}
        if settings.api.url:
            extra["PREFECT_API_URL"] = str(settings.api.url)
        if settings.api.key is not None:
            extra["PREFECT_API_KEY"] = settings.api.key.get_secret_value()
        if not extra:
            return deployment
        return dataclasses.replace(
            deployment,
            environment_variables={**extra, **dict(deployment.environment_variables)},
        )

    def _remote_task(
        self,
        task: Task[Any, Any],
        options: _Options,
        batch: _MapBatch | None,
        index: int | None,
    ) -> Task[Any, Any]:
        """A shallow copy of ``task`` whose ``fn`` ships the call to Meadow.

        The copy keeps ``__wrapped__`` and the name, so signatures, cache keys (task
        source) and the UI are those of the user's task.
        """
        fn = task.fn
        runner = self

        if task.isasync:

            async def remote_async(*args: Any, **kwargs: Any) -> Any:
                call = functools.partial(runner._call, fn, options, batch, index, args, kwargs)
                return await asyncio.to_thread(call)

            wrapper: Callable[..., Any] = functools.update_wrapper(remote_async, fn)
        else:

            def remote(*args: Any, **kwargs: Any) -> Any:
                return runner._call(fn, options, batch, index, args, kwargs)

            wrapper = functools.update_wrapper(remote, fn)
        remote_task = copy.copy(task)
        remote_task.fn = wrapper
        return remote_task

    def _call(
        self,
        fn: Callable[..., Any],
        options: _Options,
        batch: _MapBatch | None,
        index: int | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run one attempt of a task run's function on Meadow; map failures to states."""
        context = TaskRunContext.get()
        if context is None or context.task_run is None:
            raise RuntimeError("MeadowTaskRunner called its task outside a Prefect task run")
        task_run = context.task_run
        sink = TaskRunSink(get_run_logger(context), contextvars.copy_context())
        show_meadow_logs()
        run_info: _RunInfo | None = None
        if self.nested:
            args = (serialize_context(), fn, *args)
            fn = _remote.call_in_context
        else:
            run_info = _run_info(context, fn)
        try:
            # First attempts of map elements share one run_map job; retries (and calls
            # carrying a nested flow context) go alone.
            batched = batch is not None and index is not None and not self.nested
            if batched and task_run.run_count <= 1:
                assert batch is not None and index is not None
                pending = _Pending(args, kwargs, task_run.id, sink, run_info)
                return batch.call(index, pending)
            return self._run_single(
                fn, options, task_run.id, task_run.run_count, sink, run_info, args, kwargs
            )
        except TaskException as exc:
            return _state_for(exc, self._kept_exception(exc))
        except AgentUnavailableError as exc:
            return Crashed(message=f"Meadow lost its agent: {exc}", data=exc)

    def _kept_exception(self, exc: TaskException) -> BaseException | None:
        """The exception the task's code raised, as the remote side kept it (pickled in
        the host's object store); ``None`` for Meadow's own failures, or when it could
        not be kept or read."""
        if exc.kind is not None or exc.job_id is None or exc.attempt is None:
            return None
        key = _remote.exception_key(exc.job_id, exc.task_id or 0, exc.attempt)
        try:
            with self._credentials():
                store = (self.host or default_host()).object_store()
                blob = store.get(key)
                with contextlib.suppress(Exception):
                    store.delete_keys([key])
            kept = cloudpickle.loads(blob)
        except Exception:
            return None
        return kept if isinstance(kept, BaseException) else None

    def _run_single(
        self,
        fn: Callable[..., Any],
        options: _Options,
        task_run_id: uuid.UUID,
        run_count: int,
        sink: TaskRunSink,
        run_info: _RunInfo | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # The run count makes each retry its own job; a restarted caller with the same
        # task run and attempt reattaches instead of running the step twice.
        job_id = deterministic_job_id("prefect", task_run_id, run_count)
        self._active_jobs.add(job_id)
        self._job_of_task_run[task_run_id] = job_id
        try:
            if self.nested:
                target: Callable[..., Any] = fn
            else:
                assert run_info is not None
                target = functools.partial(_remote.run, run_info.task, run_info.context, fn)
            with self._credentials(), route_logs(job_id, into_task_runs({0: sink})):
                return run_function_sync(
                    target,
                    self.host,
                    options.resources or self.resources,
                    self._deployment(),
                    args=args,
                    kwargs=kwargs,
                    job_id=job_id,
                    timeout_seconds=options.timeout_seconds or self.timeout_seconds,
                )
        finally:
            self._active_jobs.discard(job_id)


def _same_host(one: Host | None, other: Host | None) -> bool:
    if one is other:
        return True
    if one is None or other is None:
        return False
    try:
        return host_to_config(one) == host_to_config(other)
    except Exception:  # a host that cannot be described as config: only itself
        return False


@dataclasses.dataclass(frozen=True)
class _RunInfo:
    """What the remote side needs to give the body its task run's context, pickled
    here so that an environment without Prefect can still load the call (and make it
    without a context): the task (carrying the user's function) and the rest."""

    task: bytes
    context: bytes


def _run_info(context: TaskRunContext, fn: Callable[..., Any]) -> _RunInfo:
    """The task run context (parameters are rebuilt there from the call) and the tags
    in force. No flow run context: that needs the flow, its task runner and the API
    (``nested=True``)."""
    task = copy.copy(context.task)
    task.fn = fn
    serialized = context.serialize()
    serialized.pop("task", None)
    serialized["parameters"] = {}
    remote_context = {
        "context": {"task_run_context": serialized, "tags_context": TagsContext.get().serialize()},
        "task_run_id": str(context.task_run.id),
    }
    return _RunInfo(task=cloudpickle.dumps(task), context=cloudpickle.dumps(remote_context))


#: Exceptions that end a task run ``Crashed`` under Prefect's own runners, not ``Failed``.
_CRASHING = {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}


def _state_for(exc: TaskException, original: BaseException | None = None) -> State[Any]:
    """A task whose worker, agent or machine died is ``Crashed``, a cancelled job
    ``Cancelled``; else raise, so Prefect fails the task run (and retries it).

    What is raised is the task's own exception (``original``, as the remote side kept
    it), with Meadow's ``TaskException`` and its remote traceback as its ``__cause__``,
    as Prefect's own runners raise the task's exception; Meadow's exception when the
    original could not be kept. A ``KeyboardInterrupt`` or ``SystemExit`` in the task
    crashes it, as under Prefect's own runners. A timeout is raised too: Prefect's own
    timeouts fail a task run, they do not crash it.
    """
    if exc.outcome == Outcome.CANCELLED:
        return Cancelled(message=f"Meadow job {exc.job_id} was cancelled", data=exc)
    if exc.is_infrastructure_failure and exc.outcome != Outcome.TIMEOUT:
        return Crashed(
            message=f"Meadow worker crashed: {exc.remote_type}: {exc.remote_message}", data=exc
        )
    if exc.kind is None and exc.remote_type in _CRASHING:
        interrupt = original if original is not None else _CRASHING[exc.remote_type]()
        state: State[Any] = run_coro_as_sync(exception_to_crashed_state(interrupt))
        return state
    if isinstance(original, Exception):
        raise original from exc
    raise exc
