"""The public API: run functions, commands and maps on a host, and follow jobs.

Everything here is the same for every host: validation before anything is launched,
pickling, building the job spec and its tasks, and turning stored outcomes into
results. Each coroutine has a synchronous twin (``*_sync``) that works from plain code
and from a thread while another event loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import io
import pickle
import re
import shlex
import tempfile
import traceback
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, BinaryIO, Generic, Literal, TypeVar, overload

from meadow_core import keys, pickling, protocol
from meadow_core._portal import portal
from meadow_core.code_snapshot import build_snapshot
from meadow_core.deployment import Deployment
from meadow_core.errors import InvalidRequestError, JobNotFoundError, SerializationError
from meadow_core.hosts.base import Host
from meadow_core.interpreters import detect_local_interpreter
from meadow_core.protocol import Environment, JobRecord, JobSpec, TaskMessage, TaskOutcome
from meadow_core.resources import Resources
from meadow_core.results import (
    JobCompletion,
    RunMapTasksFailedException,
    TaskException,
    TaskResult,
    task_state,
)
from meadow_core.watch import JobWatch

_T = TypeVar("_T")
_U = TypeVar("_U")

#: Objects to upload for a job: bytes, or a file read only if the store lacks the key.
Objects = dict[str, bytes | Path]

_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_default_host: Host | None = None


def default_host() -> Host:
    """The embedded default: ``LocalHost()`` on ``$MEADOW_HOME``, shared by every call."""
    global _default_host
    if _default_host is None:
        from meadow_core.hosts.local import LocalHost

        _default_host = LocalHost()
    return _default_host


def deterministic_job_id(*parts: object, prefix: str = "job") -> str:
    """A job id derived from e.g. (pipeline run id, step key, attempt).

    An orchestrator that restarts or retries computes the same id and finds the job it
    launched instead of launching a second one. ``prefix`` (e.g. the DAG or step name)
    makes ``meadow jobs`` readable; it is cleaned to the characters job ids allow.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-._")[:80] or "job"
    return f"{readable}-{digest[:32]}"


# -- validation and preparation ---------------------------------------------------------


@dataclasses.dataclass
class _Prepared:
    host: Host
    resources: Resources
    deployment: Deployment


async def _prepare(
    host: Host | None,
    resources: Resources | None,
    deployment: Deployment | Awaitable[Deployment] | None,
    sidecar_containers: object,
    ports: object,
) -> _Prepared:
    """Check everything that can be checked before a machine is touched."""
    host = default_host() if host is None else host
    if not isinstance(host, Host):
        raise InvalidRequestError(
            f"host must be a meadow_core Host such as LocalHost(), got {type(host).__name__}"
        )
    if resources is None:
        resources = host.default_resources()
    elif not isinstance(resources, Resources):
        raise InvalidRequestError(
            f"resources must be meadow_core.Resources, got {type(resources).__name__}"
        )
    host.check_resources(resources)
    if deployment is None:
        deployment = Deployment()
    elif inspect.isawaitable(deployment):
        deployment = await deployment
    if not isinstance(deployment, Deployment):
        raise InvalidRequestError(
            f"deployment must be a meadow_core.Deployment, got {type(deployment).__name__}"
        )
    if host.runs_elsewhere and deployment.code is None and deployment.environment is None:
        # Nothing of this machine can be used in place there: mirror code and packages.
        deployment = await Deployment.mirror_local(
            interpreter=detect_local_interpreter(),
            environment_variables=deployment.environment_variables,
        )
    if sidecar_containers:
        raise NotImplementedError("sidecar_containers are not implemented yet")
    if ports:
        raise NotImplementedError("ports are not implemented yet")
    return _Prepared(host, resources, deployment)


async def _environment(prepared: _Prepared, objects: Objects) -> Environment:
    """The environment tasks run in; with a code selection, snapshot the code and add
    its manifest and file contents to the objects to upload (present ones are skipped).
    A container image (named, or built for ``additional_software``) is pinned here."""
    deployment = prepared.deployment
    environment = prepared.host.environment(deployment.environment_variables)
    spec = deployment.environment
    if spec is not None and (spec.kind == "container" or spec.system_packages):
        # An image named by the user, or one built for additional_software: pinned to a
        # digest now, so a missing image fails here and every task runs the same one.
        from meadow_core.containers import image_for

        environment.container_image = await asyncio.to_thread(image_for, spec)
        environment.interpreter = "python3"
        environment.sys_path = []
        environment.working_directory = ""  # the image's own, unless code is shipped
        spec = None
    if deployment.code is None:
        return environment
    if spec is not None:
        objects[spec.key] = spec.to_bytes()
        environment.env_spec = spec.key
    code = deployment.code
    snapshot, sources = await asyncio.to_thread(
        build_snapshot,
        code.roots,
        code.extensions,
        code.globs,
        code.working_directory,
        code.path_subdirs,
    )
    objects.update(sources.objects())
    objects[snapshot.key] = snapshot.manifest()
    environment.sys_path = []  # the snapshot's roots replace the caller's own paths
    environment.code_manifest = snapshot.key
    return environment


def _new_job_id(job_id: str | None) -> str:
    if job_id is None:
        return f"job-{uuid.uuid4().hex[:20]}"
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidRequestError(
            f"job_id {job_id!r} must be 1-128 letters, digits, '.', '_' or '-'; "
            "use deterministic_job_id(...) to derive one"
        )
    return job_id


def _check_timeout(timeout_seconds: float | None) -> None:
    if timeout_seconds is not None and not timeout_seconds > 0:
        raise InvalidRequestError(f"timeout_seconds must be positive, got {timeout_seconds!r}")


def _pickle(value: object, what: str) -> bytes:
    try:
        return pickling.dumps(value)
    except Exception as exc:
        raise SerializationError(
            f"{what} cannot be pickled ({type(exc).__name__}: {exc}); pass plain data, or "
            "create unpicklable objects (locks, connections, open files) inside the function"
        ) from exc


def _function_payload(
    function: Callable[..., Any] | str,
) -> tuple[str | None, str | None, Objects, str]:
    """(function_key, function_name, objects to upload, display name)."""
    if isinstance(function, str):
        if "." not in function:
            raise InvalidRequestError(
                f"function {function!r} must be a callable or a 'package.module.function' string"
            )
        return None, function, {}, function
    if not callable(function):
        raise InvalidRequestError(f"function must be callable, got {type(function).__name__}")
    blob = _pickle(function, f"the function {getattr(function, '__qualname__', function)!r}")
    key = protocol.content_key(blob, keys.FUNCTIONS)
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return key, None, {key: blob}, name


async def _submit(
    prepared: _Prepared, spec: JobSpec, tasks: Sequence[TaskMessage], objects: Objects
) -> tuple[JobSpec, bool]:
    """Submit, or find the existing job with this id (reattach after a restart); says
    whether this call created the job."""
    created = await prepared.host.submit(spec, tasks, objects)
    if created:
        return spec, True
    existing = await prepared.host.get_spec(spec.job_id)
    if existing is None:
        raise JobNotFoundError(f"job {spec.job_id} vanished while it was being submitted")
    same = (
        existing.kind == spec.kind
        and existing.num_tasks == spec.num_tasks
        and existing.function_key == spec.function_key
        and existing.function_name == spec.function_name
        and existing.command == spec.command
    )
    if not same:
        raise InvalidRequestError(
            f"job id {spec.job_id} is already used by a different job ({existing.name!r}); "
            "use a new job_id"
        )
    return existing, False


# -- turning outcomes into results -------------------------------------------------------


@contextlib.asynccontextmanager
async def _stored_file(host: Host, key: str) -> AsyncIterator[BinaryIO]:
    """A large result's pickle as a file to unpickle from: the store's own file when it
    is on this machine, else a streamed download. Never a bytes copy beside the value, so
    a 2 GB result costs the caller one copy of it."""
    try:
        store = host.object_store()
    except NotImplementedError:  # a host without a store of its own: its bytes, then
        yield io.BytesIO(await host.read_object(key))
        return
    local = store.local_path(key)
    if local is not None:
        with open(local, "rb") as pickled:
            yield pickled
        return
    with tempfile.TemporaryDirectory(prefix="meadow-result-") as folder:
        target = Path(folder) / "value"
        await asyncio.to_thread(store.download, key, target)
        with open(target, "rb") as pickled:
            yield pickled


async def _task_result(
    host: Host, outcome: TaskOutcome, *, single: bool = False
) -> TaskResult[Any]:
    """The caller's view of a final outcome; ``single`` for a function job's one task
    (Meadowrun names a process exit differently there, see ``task_state``)."""
    log_location = host.object_location(outcome.log_key) if outcome.log_key else None
    common: dict[str, Any] = {
        "task_id": outcome.task_id,
        "attempt": outcome.attempt,
        "outcome": outcome.outcome,
        "log_location": log_location,
        "job_id": outcome.job_id,
        "max_memory_used_gb": outcome.max_memory_gb,
    }
    if outcome.outcome == protocol.SUCCEEDED:
        if outcome.return_code is not None and outcome.value is None and outcome.value_key is None:
            return TaskResult(is_success=True, result=None, exception=None, **common)
        try:
            if outcome.value is not None:
                value = pickle.loads(outcome.value)
            elif outcome.value_key is not None:
                async with _stored_file(host, outcome.value_key) as pickled:
                    value = await asyncio.to_thread(pickle.load, pickled)
            else:
                value = None
        except OSError:
            raise  # reading the store failed: not the result's fault
        except Exception as exc:
            return TaskResult(
                is_success=False,
                result=None,
                exception=(
                    protocol.ErrorKind.RESULT_NOT_UNPICKLABLE,
                    f"the task succeeded but its result could not be unpickled here "
                    f"({type(exc).__name__}: {exc}); is its class importable in the caller?",
                    traceback.format_exc(),
                ),
                **common | {"outcome": protocol.FAILED},
            )
        return TaskResult(is_success=True, result=value, exception=None, **common)
    error = outcome.error or [protocol.ErrorKind.UNKNOWN, "the task failed", ""]
    return TaskResult(
        is_success=False,
        result=None,
        exception=(error[0], error[1], error[2]),
        state=task_state(outcome.outcome, error[0], single=single),
        **common,
    )


@contextlib.asynccontextmanager
async def _watched(host: Host, spec: JobSpec, new: bool) -> AsyncIterator[JobWatch]:
    async with host.watch(spec.job_id, spec.num_tasks, spec.kind, new=new) as job_watch:
        yield job_watch


@contextlib.asynccontextmanager
async def _submitted(
    prepared: _Prepared, spec: JobSpec, tasks: Sequence[TaskMessage], objects: Objects
) -> AsyncIterator[tuple[JobSpec, JobWatch]]:
    """Watch first, then submit, so no log line or result slips past the watch.

    A caller that gives up before every outcome arrived (its coroutine cancelled, Ctrl-C,
    an error, or it stopped iterating) cancels the job it started; nobody would collect
    the rest. A caller that reattached to a job another caller created (the same
    deterministic job id) only stops waiting: the job is its creator's. Waiting on an
    existing job (``wait_for_job``) never cancels it either.
    """
    created: bool | None = None  # unknown until the submission answers
    async with _watched(prepared.host, spec, new=True) as job_watch:
        try:
            submitted, created = await _submit(prepared, spec, tasks, objects)
            yield submitted, job_watch
        except BaseException:
            if created is not False and not job_watch.all_delivered:
                with contextlib.suppress(Exception):
                    await asyncio.shield(prepared.host.cancel(spec.job_id))
            raise


async def _command_completion(
    host: Host, spec: JobSpec, job_watch: JobWatch, check: bool
) -> JobCompletion[None]:
    async for outcome in job_watch.outcomes():
        log = (await host.read_object(outcome.log_key)).decode() if outcome.log_key else ""
        completion: JobCompletion[None] = JobCompletion(
            job_id=spec.job_id,
            return_code=outcome.return_code if outcome.return_code is not None else -1,
            log=log,
            log_location=host.object_location(outcome.log_key) if outcome.log_key else None,
            outcome=outcome.outcome,
        )
        if check and outcome.outcome != protocol.SUCCEEDED:
            error = outcome.error or [protocol.ErrorKind.COMMAND_FAILED, "the command failed", ""]
            exc = TaskException(
                error[0],
                error[1],
                error[2] or log[-4000:],
                attempt=outcome.attempt,
                job_id=spec.job_id,
                outcome=outcome.outcome,
            )
            exc.completion = completion  # type: ignore[attr-defined]
            raise exc
        return completion
    raise JobNotFoundError(f"job {spec.job_id} ended without a result")


async def _function_result(host: Host, spec: JobSpec, job_watch: JobWatch) -> Any:
    async for outcome in job_watch.outcomes():
        result = await _task_result(host, outcome, single=True)
        if not result.is_success:
            assert result.exception is not None
            raise TaskException(
                *result.exception,
                attempt=result.attempt,
                job_id=spec.job_id,
                outcome=result.outcome,
                state=result.state,
            )
        return result.result
    raise JobNotFoundError(f"job {spec.job_id} ended without a result")


async def _map_results(
    host: Host, spec: JobSpec, job_watch: JobWatch, args: Sequence[Any] | None = None
) -> list[Any]:
    """The map's values in input order, or ``RunMapTasksFailedException`` naming the
    failed tasks and their arguments (``args``, else read back from the store)."""
    values: list[Any] = [None] * spec.num_tasks
    failed: list[TaskResult[Any]] = []
    async for outcome in job_watch.outcomes():
        result = await _task_result(host, outcome)
        if result.is_success:
            values[result.task_id] = result.result
        else:
            failed.append(result)
    if failed:
        failed.sort(key=lambda r: r.task_id)
        if args is None:
            args = await _stored_map_args(host, spec)
        failed_args = [args[r.task_id] for r in failed] if args is not None else None
        raise RunMapTasksFailedException(failed, values, failed_args)
    return values


async def _stored_map_args(host: Host, spec: JobSpec) -> list[Any] | None:
    """A map's arguments read back from its args blob (pickles back to back), for a
    caller that waits on a job another call submitted; ``None`` if they cannot be."""
    if spec.args_key is None:
        return None
    try:
        blob = io.BytesIO(await host.read_object(spec.args_key))
        return [pickle.load(blob) for _ in range(spec.num_tasks)]
    except Exception:
        return None


# -- jobs ---------------------------------------------------------------------------------


@dataclasses.dataclass
class JobHandle:
    """A submitted job: wait for it, look at it or cancel it, now or from another process."""

    job_id: str
    host: Host
    kind: str

    async def wait(self) -> Any:
        """The job's result: the function's value, the map's list, or a ``JobCompletion``."""
        return await wait_for_job(self.job_id, self.host)

    async def status(self) -> JobRecord:
        record = await self.host.get_job(self.job_id)
        if record is None:
            raise JobNotFoundError(f"job {self.job_id} is not known to this host")
        return record

    async def cancel(self) -> bool:
        return await self.host.cancel(self.job_id)

    async def as_completed(self) -> AsyncIterator[TaskResult[Any]]:
        """Each task's final ``TaskResult`` as it is stored (all of them for a finished
        job). Stopping early does not cancel the job."""
        spec = await self.host.get_spec(self.job_id)
        if spec is None:
            raise JobNotFoundError(f"job {self.job_id} is not known to this host")
        async with _watched(self.host, spec, new=False) as job_watch:
            async for outcome in job_watch.outcomes():
                yield await _task_result(self.host, outcome)

    def as_completed_sync(self) -> Iterator[TaskResult[Any]]:
        return portal.iterate(self.as_completed())

    def wait_sync(self) -> Any:
        return portal.call(self.wait())

    def status_sync(self) -> JobRecord:
        return portal.call(self.status())

    def cancel_sync(self) -> bool:
        return portal.call(self.cancel())


async def wait_for_job(
    job_id: str, host: Host | None = None, check: bool = True, fetch_result: bool = True
) -> Any:
    """Wait for a job submitted earlier (maybe by another process) and return its result.

    With ``fetch_result=False`` nothing is unpickled: the job's final ``JobRecord`` is
    returned (a waiter that cannot import the result's classes, like an Airflow trigger).
    Giving up on the wait never cancels the job.
    """
    host = host or default_host()
    spec = await host.get_spec(job_id)
    if spec is None:
        raise JobNotFoundError(f"job {job_id} is not known to this host")
    async with _watched(host, spec, new=False) as job_watch:
        if not fetch_result:
            async for _ in job_watch.outcomes():
                pass
            return await get_job(job_id, host)
        if spec.kind == "command":
            return await _command_completion(host, spec, job_watch, check)
        if spec.kind == "map":
            return await _map_results(host, spec, job_watch)
        return await _function_result(host, spec, job_watch)


async def get_job(job_id: str, host: Host | None = None) -> JobRecord:
    host = host or default_host()
    record = await host.get_job(job_id)
    if record is None:
        raise JobNotFoundError(f"job {job_id} is not known to this host")
    return record


async def list_jobs(host: Host | None = None, limit: int = 50) -> list[JobRecord]:
    return await (host or default_host()).list_jobs(limit)


async def cancel_job(job_id: str, host: Host | None = None) -> bool:
    """Cancel a job: queued tasks are dropped, running ones are killed."""
    host = host or default_host()
    if not await host.cancel(job_id):
        raise JobNotFoundError(f"job {job_id} is not known to this host")
    return True


async def read_task_log(
    job_id: str, task_id: int = 0, host: Host | None = None, attempt: int | None = None
) -> str:
    """The full stored log of one task (its last attempt unless ``attempt`` is given)."""
    host = host or default_host()
    outcomes = [
        o
        for o in await host.results(job_id)
        if o.task_id == task_id and (attempt is None or o.attempt == attempt)
    ]
    if not outcomes:
        if await host.get_job(job_id) is None:
            raise JobNotFoundError(f"job {job_id} is not known to this host")
        return ""
    outcome = max(outcomes, key=lambda o: o.attempt)
    return (await host.read_object(outcome.log_key)).decode() if outcome.log_key else ""


# -- the run_* entry points ---------------------------------------------------------------


async def run_function(
    function: Callable[..., _T] | str,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: bool = True,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> Any:
    """Run ``function(*args, **kwargs)`` on ``host`` and return its value.

    ``function`` may be a ``"package.module.function"`` string resolved on the remote
    side. With ``wait_for_result=False`` returns a ``JobHandle`` at once. A ``job_id``
    that exists already reattaches to that job instead of starting another.
    """
    prepared = await _prepare(host, resources, deployment, sidecar_containers, ports)
    _check_timeout(timeout_seconds)
    function_key, function_name, objects, name = _function_payload(function)
    payload = _pickle((tuple(args or ()), dict(kwargs or {})), "the arguments")
    spec = JobSpec(
        job_id=_new_job_id(job_id),
        kind="function",
        name=name,
        environment=await _environment(prepared, objects),
        resources=prepared.resources.to_wire(),
        num_tasks=1,
        function_key=function_key,
        function_name=function_name,
        timeout_seconds=timeout_seconds,
        num_concurrent_tasks=1,
    )
    task = TaskMessage(spec.job_id, 0)
    if len(payload) <= protocol.INLINE_LIMIT:
        task.args_inline = payload
    else:
        spec.args_key = protocol.content_key(payload, keys.ARGS)
        objects[spec.args_key] = payload
        task.args_range = (0, len(payload))
    if not wait_for_result:
        spec, _ = await _submit(prepared, spec, [task], objects)
        return JobHandle(spec.job_id, prepared.host, spec.kind)
    async with _submitted(prepared, spec, [task], objects) as (spec, job_watch):
        return await _function_result(prepared.host, spec, job_watch)


async def run_command(
    args: str | Sequence[str],
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    context_variables: dict[str, Any] | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: bool = True,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
    check: bool = True,
) -> Any:
    """Run a command on ``host`` and return a ``JobCompletion`` (exit code and log).

    With ``check`` (the default) a non-zero exit raises ``TaskException`` whose
    ``completion`` attribute holds the ``JobCompletion``.
    """
    prepared = await _prepare(host, resources, deployment, sidecar_containers, ports)
    _check_timeout(timeout_seconds)
    if context_variables:
        raise NotImplementedError("context_variables are not implemented yet")
    command = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    if not command:
        raise InvalidRequestError("run_command needs a non-empty command")
    for index, part in enumerate(command):
        if "\x00" in part:
            raise InvalidRequestError(
                f"argument {index} of the command holds a NUL byte ({part!r}): no program "
                "can receive one; remove it"
            )
    objects: Objects = {}
    spec = JobSpec(
        job_id=_new_job_id(job_id),
        kind="command",
        name=shlex.join(command)[:200],
        environment=await _environment(prepared, objects),
        resources=prepared.resources.to_wire(),
        num_tasks=1,
        command=command,
        timeout_seconds=timeout_seconds,
        num_concurrent_tasks=1,
    )
    tasks = [TaskMessage(spec.job_id, 0)]
    if not wait_for_result:
        spec, _ = await _submit(prepared, spec, tasks, objects)
        return JobHandle(spec.job_id, prepared.host, spec.kind)
    async with _submitted(prepared, spec, tasks, objects) as (spec, job_watch):
        return await _command_completion(prepared.host, spec, job_watch, check)


@dataclasses.dataclass
class _MapJob:
    prepared: _Prepared
    spec: JobSpec
    tasks: list[TaskMessage]
    objects: Objects


def _map_inputs(args: object) -> list[Any]:
    """A map's inputs as a list, refusing what is surely a mistake (before any upload)."""
    if args is None:
        raise InvalidRequestError("run_map needs args: a sequence of inputs, one per task")
    if isinstance(args, str | bytes | bytearray):
        raise InvalidRequestError(
            f"args is a {type(args).__name__}, which would map over its characters: pass "
            "[value] for one task on it, or list(value) if characters are really meant"
        )
    if isinstance(args, Mapping):
        raise InvalidRequestError(
            "args is a mapping: pass list(args.items()), list(args) or list(args.values())"
        )
    if not isinstance(args, Iterable):
        raise InvalidRequestError(
            f"args must be a sequence of inputs, one per task, got {type(args).__name__}"
        )
    return list(args)


async def _build_map(
    function: Callable[[_T], _U],
    args: Sequence[_T],
    host: Host | None,
    resources_per_task: Resources | None,
    deployment: Deployment | Awaitable[Deployment] | None,
    num_concurrent_tasks: int | None,
    sidecar_containers: object,
    ports: object,
    max_num_task_attempts: int,
    retry_with_more_memory: bool,
    job_id: str | None,
    timeout_seconds: float | None,
) -> _MapJob:
    prepared = await _prepare(host, resources_per_task, deployment, sidecar_containers, ports)
    _check_timeout(timeout_seconds)
    if isinstance(max_num_task_attempts, bool) or not (
        isinstance(max_num_task_attempts, int) and max_num_task_attempts >= 1
    ):
        raise InvalidRequestError(
            f"max_num_task_attempts must be an integer of at least 1, got {max_num_task_attempts!r}"
        )
    if num_concurrent_tasks is not None and not (
        isinstance(num_concurrent_tasks, int) and num_concurrent_tasks >= 1
    ):
        raise InvalidRequestError(
            f"num_concurrent_tasks must be a positive integer, got {num_concurrent_tasks!r}"
        )
    if retry_with_more_memory and prepared.resources.memory_gb is None:
        raise InvalidRequestError(
            "retry_with_more_memory needs resources_per_task=Resources(memory_gb=...) to multiply"
        )
    items = list(args)
    function_key, function_name, objects, name = _function_payload(function)
    pieces = [_pickle(item, f"argument {index} of the map") for index, item in enumerate(items)]
    blob = b"".join(pieces)
    args_key = protocol.content_key(blob, keys.ARGS)
    objects[args_key] = blob
    spec = JobSpec(
        job_id=_new_job_id(job_id),
        kind="map",
        name=f"map {name} over {len(items)}",
        environment=await _environment(prepared, objects),
        resources=prepared.resources.to_wire(),
        num_tasks=len(items),
        function_key=function_key,
        function_name=function_name,
        args_key=args_key,
        max_attempts=max_num_task_attempts,
        retry_with_more_memory=retry_with_more_memory,
        timeout_seconds=timeout_seconds,
        num_concurrent_tasks=num_concurrent_tasks or len(items) // 2 + 1,
    )
    tasks = []
    offset = 0
    for index, piece in enumerate(pieces):
        tasks.append(TaskMessage(spec.job_id, index, args_range=(offset, len(piece))))
        offset += len(piece)
    return _MapJob(prepared, spec, tasks, objects)


async def run_map(
    function: Callable[[_T], _U],
    args: Sequence[_T],
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    num_concurrent_tasks: int | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: bool = True,
    max_num_task_attempts: int = 1,
    retry_with_more_memory: bool = False,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> Any:
    """``[function(a) for a in args]``, run in parallel on ``host``; results in input order.

    ``num_concurrent_tasks`` defaults to ``len(args) // 2 + 1``. Failed tasks are
    retried up to ``max_num_task_attempts``; with ``retry_with_more_memory`` attempt n
    of a memory-bound task gets n times the memory. If any task still fails,
    ``RunMapTasksFailedException`` lists every failure and carries the other results.
    """
    args = _map_inputs(args)
    if not args:
        return [] if wait_for_result else None
    job = await _build_map(
        function,
        args,
        host,
        resources_per_task,
        deployment,
        num_concurrent_tasks,
        sidecar_containers,
        ports,
        max_num_task_attempts,
        retry_with_more_memory,
        job_id,
        timeout_seconds,
    )
    if not wait_for_result:
        spec, _ = await _submit(job.prepared, job.spec, job.tasks, job.objects)
        return JobHandle(spec.job_id, job.prepared.host, spec.kind)
    async with _submitted(job.prepared, job.spec, job.tasks, job.objects) as (spec, job_watch):
        return await _map_results(job.prepared.host, spec, job_watch, args)


class _Started:
    """What ``_as_completed`` yields first: the job is submitted and watched."""


_STARTED = _Started()


class MapAsCompleted(AsyncIterator[TaskResult[_U]], Awaitable["MapAsCompleted[_U]"], Generic[_U]):
    """What ``run_map_as_completed`` returns: each task's ``TaskResult`` as it is final.

    Iterate it at once (``async for r in run_map_as_completed(...)``), or await it
    first as on Meadowrun (``async for r in await run_map_as_completed(...)``): the
    await validates, uploads and submits, so a bad request raises there, and returns
    this same iterator. Stopping early (``aclose``, a ``break`` then garbage
    collection, a cancelled task) cancels the job.
    """

    def __init__(self, steps: AsyncGenerator[TaskResult[_U] | _Started, None]) -> None:
        self._steps = steps
        self._started = False

    async def _start(self) -> MapAsCompleted[_U]:
        if not self._started:
            self._started = True
            try:
                first = await self._steps.__anext__()
            except StopAsyncIteration:
                return self  # no tasks: nothing was submitted and nothing will come
            assert first is _STARTED
        return self

    def __await__(self) -> Generator[Any, None, MapAsCompleted[_U]]:
        return self._start().__await__()

    def __aiter__(self) -> MapAsCompleted[_U]:
        return self

    async def __anext__(self) -> TaskResult[_U]:
        await self._start()
        item = await self._steps.__anext__()
        assert not isinstance(item, _Started)
        return item

    async def aclose(self) -> None:
        """Stop: the job is cancelled unless every result already arrived."""
        await self._steps.aclose()


def run_map_as_completed(
    function: Callable[[_T], _U],
    args: Sequence[_T],
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    num_concurrent_tasks: int | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    max_num_task_attempts: int = 1,
    retry_with_more_memory: bool = False,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> MapAsCompleted[_U]:
    """Like ``run_map``, but yields each task's ``TaskResult`` as soon as it is final.

    Both spellings work: ``async for r in run_map_as_completed(...)`` and Meadowrun's
    ``async for r in await run_map_as_completed(...)`` (see ``MapAsCompleted``).
    """
    return MapAsCompleted(
        _as_completed(
            function,
            args,
            host,
            resources_per_task,
            deployment,
            num_concurrent_tasks,
            sidecar_containers,
            ports,
            max_num_task_attempts,
            retry_with_more_memory,
            job_id,
            timeout_seconds,
        )
    )


async def _as_completed(
    function: Callable[[_T], _U],
    args: Sequence[_T],
    host: Host | None,
    resources_per_task: Resources | None,
    deployment: Deployment | Awaitable[Deployment] | None,
    num_concurrent_tasks: int | None,
    sidecar_containers: object,
    ports: object,
    max_num_task_attempts: int,
    retry_with_more_memory: bool,
    job_id: str | None,
    timeout_seconds: float | None,
) -> AsyncGenerator[TaskResult[_U] | _Started, None]:
    args = _map_inputs(args)
    if not args:
        return
    job = await _build_map(
        function,
        args,
        host,
        resources_per_task,
        deployment,
        num_concurrent_tasks,
        sidecar_containers,
        ports,
        max_num_task_attempts,
        retry_with_more_memory,
        job_id,
        timeout_seconds,
    )
    async with _submitted(job.prepared, job.spec, job.tasks, job.objects) as (_, job_watch):
        yield _STARTED
        async for outcome in job_watch.outcomes():
            yield await _task_result(job.prepared.host, outcome)


# -- synchronous twins ---------------------------------------------------------------------
# Overloads give a caller's type checker what comes back: the function's value, the
# map's list, a ``JobCompletion``, or a ``JobHandle`` with ``wait_for_result=False``.


@overload
def run_function_sync(
    function: Callable[..., _T],
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: Literal[True] = True,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> _T: ...
@overload
def run_function_sync(
    function: str,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: Literal[True] = True,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> Any: ...
@overload
def run_function_sync(
    function: Callable[..., Any] | str,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    *,
    wait_for_result: Literal[False],
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> JobHandle: ...
@overload
def run_function_sync(
    function: Callable[..., Any] | str,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: bool = True,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> Any: ...
def run_function_sync(function: Callable[..., _T] | str, *args: Any, **kwargs: Any) -> Any:
    """``run_function`` for synchronous code; same arguments."""
    return portal.call(run_function(function, *args, **kwargs))


@overload
def run_command_sync(
    args: str | Sequence[str],
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    context_variables: dict[str, Any] | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: Literal[True] = True,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
    check: bool = True,
) -> JobCompletion[None]: ...
@overload
def run_command_sync(
    args: str | Sequence[str],
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    context_variables: dict[str, Any] | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    *,
    wait_for_result: Literal[False],
    job_id: str | None = None,
    timeout_seconds: float | None = None,
    check: bool = True,
) -> JobHandle: ...
@overload
def run_command_sync(
    args: str | Sequence[str],
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    context_variables: dict[str, Any] | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: bool = True,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
    check: bool = True,
) -> Any: ...
def run_command_sync(args: str | Sequence[str], *rest: Any, **kwargs: Any) -> Any:
    """``run_command`` for synchronous code; same arguments."""
    return portal.call(run_command(args, *rest, **kwargs))


@overload
def run_map_sync(
    function: Callable[[_T], _U],
    args: Sequence[_T],
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    num_concurrent_tasks: int | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: Literal[True] = True,
    max_num_task_attempts: int = 1,
    retry_with_more_memory: bool = False,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> list[_U]: ...
@overload
def run_map_sync(
    function: Callable[[_T], _U],
    args: Sequence[_T],
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    num_concurrent_tasks: int | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    *,
    wait_for_result: Literal[False],
    max_num_task_attempts: int = 1,
    retry_with_more_memory: bool = False,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> JobHandle | None: ...  # None for an empty ``args``: there is no job
@overload
def run_map_sync(
    function: Callable[[_T], _U],
    args: Sequence[_T],
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    num_concurrent_tasks: int | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    wait_for_result: bool = True,
    max_num_task_attempts: int = 1,
    retry_with_more_memory: bool = False,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> Any: ...
def run_map_sync(
    function: Callable[[_T], _U], args: Sequence[_T], *rest: Any, **kwargs: Any
) -> Any:
    """``run_map`` for synchronous code; same arguments."""
    return portal.call(run_map(function, args, *rest, **kwargs))


def run_map_as_completed_sync(
    function: Callable[[_T], _U],
    args: Sequence[_T],
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | Awaitable[Deployment] | None = None,
    num_concurrent_tasks: int | None = None,
    sidecar_containers: object = None,
    ports: object = None,
    max_num_task_attempts: int = 1,
    retry_with_more_memory: bool = False,
    *,
    job_id: str | None = None,
    timeout_seconds: float | None = None,
) -> Iterator[TaskResult[_U]]:
    """``run_map_as_completed`` for synchronous code: a plain iterator."""
    return portal.iterate(
        run_map_as_completed(
            function,
            args,
            host,
            resources_per_task,
            deployment,
            num_concurrent_tasks,
            sidecar_containers,
            ports,
            max_num_task_attempts,
            retry_with_more_memory,
            job_id=job_id,
            timeout_seconds=timeout_seconds,
        )
    )


def wait_for_job_sync(
    job_id: str, host: Host | None = None, check: bool = True, fetch_result: bool = True
) -> Any:
    return portal.call(wait_for_job(job_id, host, check, fetch_result))


def get_job_sync(job_id: str, host: Host | None = None) -> JobRecord:
    return portal.call(get_job(job_id, host))


def list_jobs_sync(host: Host | None = None, limit: int = 50) -> list[JobRecord]:
    return portal.call(list_jobs(host, limit))


def cancel_job_sync(job_id: str, host: Host | None = None) -> bool:
    return portal.call(cancel_job(job_id, host))


def read_task_log_sync(
    job_id: str, task_id: int = 0, host: Host | None = None, attempt: int | None = None
) -> str:
    return portal.call(read_task_log(job_id, task_id, host, attempt))
