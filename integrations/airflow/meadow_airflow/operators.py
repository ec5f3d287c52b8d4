"""``MeadowOperator``: run a Python callable or a command of an Airflow task on a Meadow host.

The operator is a thin shell around Meadow's public API: it checks its inputs, derives the
job id from the task instance, submits (or finds the job an earlier try launched), waits
while the remote output streams into the task log, and turns the result into XCom.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import cloudpickle
from airflow.sdk import BaseHook, BaseOperator, Context
from airflow.sdk.bases.operator import partial as _airflow_partial
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from meadow_airflow.credentials import ConnectionCredentialsError, connection_scope
from meadow_airflow.hosts import host_from_spec, host_to_spec
from meadow_airflow.references import make_reference, resolve_meadow_results, xcom_can_store
from meadow_airflow.triggers import MeadowJobTrigger
from meadow_core import (
    Deployment,
    ErrorKind,
    Host,
    InvalidRequestError,
    JobCompletion,
    JobNotFoundError,
    JobState,
    MeadowError,
    Resources,
    TaskException,
    UnsatisfiableResourcesError,
    cancel_job_sync,
    default_host,
    deterministic_job_id,
    get_job_sync,
    read_task_log_sync,
    route_logs,
    run_command_sync,
    run_function_sync,
    wait_for_job_sync,
)

#: ``task_state_store`` key holding the job of the try in flight (see ``_find_job``).
STATE_KEY = "meadow_job_id"
_ACTIVE = (JobState.QUEUED, JobState.RUNNING)


def meadow_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Rename a Meadow ``resources=`` to ``meadow_resources=`` before Airflow sees it.

    Airflow's mapping code (``.partial``, ``.expand``) converts any ``resources`` kwarg to
    its own executor ``Resources`` and fails on Meadow's.
    """
    if isinstance(kwargs.get("resources"), Resources):
        kwargs = dict(kwargs)
        kwargs["meadow_resources"] = kwargs.pop("resources")
    return kwargs


class MeadowRemoteError(AirflowException):
    """The remote task raised, crashed or timed out; the message carries its traceback."""


def _resolve_awaitable(value: Any) -> Any:
    """``Deployment.mirror_local()`` is a coroutine: resolve it once, at DAG parse time.

    A coroutine stored on the operator could be awaited only once (not on a retry) and
    cannot be copied; the resolved ``Deployment`` can.
    """
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wait()).result()


def _ship_by_value(function: Callable[..., Any]) -> None:
    """Pickle functions of DAG files by value.

    Airflow imports a DAG file under a made-up module name (``unusual_prefix_...``) that
    no other process can import, so pickling its functions by reference would fail on the
    Meadow worker with ModuleNotFoundError.
    """
    name = getattr(function, "__module__", None)
    module = sys.modules.get(name) if name else None
    if module is None or name == "__main__":
        return
    try:
        findable = importlib.util.find_spec(name) is not None  # type: ignore[arg-type]
    except (ImportError, ValueError):
        findable = False
    if not findable or name.startswith("unusual_prefix_"):  # type: ignore[union-attr]
        cloudpickle.register_pickle_by_value(module)


class _IntoTaskLog:
    """Where one job's remote output goes (a ``route_logs`` target): the task log.

    Counts the lines, so the stored log is copied only if nothing streamed.
    """

    def __init__(self, log: Any) -> None:
        self.log = log
        self.lines = 0
        self.complete = False

    def __call__(self, record: logging.LogRecord) -> None:
        self.lines += 1
        self.log.log(record.levelno, "[meadow] %s", record.getMessage())


class MeadowOperator(BaseOperator):
    """Run ``python_callable(*op_args, **op_kwargs)`` or ``command`` on a Meadow host.

    :param python_callable: the function to run remotely (give this or ``command``).
    :param op_args: positional arguments (templated); Meadow result references from
        upstream Meadow tasks are replaced by their values.
    :param op_kwargs: keyword arguments (templated), resolved the same way.
    :param command: a command (string or list, templated) to run instead of a function;
        XCom gets its last output line, like ``BashOperator``.
    :param host: a ``meadow_core.Host`` (default ``LocalHost()`` on ``$MEADOW_HOME``).
    :param resources: ``meadow_core.Resources`` the task needs (``meadow_resources`` is
        the same; ``.partial()`` and ``@task.meadow`` rename it, because Airflow's mapping
        code claims ``resources`` for BaseOperator's own executor resources).
    :param deployment: a ``meadow_core.Deployment`` (or the coroutine
        ``Deployment.mirror_local(...)``, resolved when the DAG is parsed).
    :param environment_variables: extra variables for the remote process (templated).
    :param timeout_seconds: Meadow kills the remote task after this many seconds.
    :param deferrable: free the worker slot while a trigger waits for the job.
    :param durable: keep the job id in ``task_state_store`` so that a retry after the
        loss of the worker reattaches (as ``ResumableJobMixin``); costs one API call.
    :param aws_conn_id: Airflow connection with the credentials for a host that takes
        them (``Host.takes_credentials``; the name is kept from when the only such host
        was EC2's). Its type picks the provider that reads it (``aws``: the Amazon
        provider's ``AwsBaseHook``, assumed roles included; without that provider, an
        access key or profile). Used for this task only; without it, the cloud SDK's
        own chain on the worker decides.
    :param region_name: deprecated: give the host its region (a host setting); fills the
        host's ``region_name`` setting when the host leaves it unset.
    """

    template_fields: Sequence[str] = ("op_args", "op_kwargs", "command", "environment_variables")
    template_fields_renderers = {
        "op_args": "py",
        "op_kwargs": "py",
        "command": "bash",
        "environment_variables": "json",
    }
    ui_color = "#c7e9b4"

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """``BaseOperator.partial``, with a Meadow ``resources=`` passed on by its own name."""
        return _airflow_partial(cls, **meadow_kwargs(kwargs))

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any] | None = None,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        command: str | Sequence[str] | None = None,
        host: Host | None = None,
        resources: Resources | None = None,
        meadow_resources: Resources | None = None,
        deployment: Deployment | Any = None,
        environment_variables: Mapping[str, str] | None = None,
        timeout_seconds: float | None = None,
        deferrable: bool = False,
        durable: bool = True,
        aws_conn_id: str | None = None,
        region_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (python_callable is None) == (command is None):
            raise ValueError("MeadowOperator needs exactly one of python_callable= or command=")
        if python_callable is not None and not callable(python_callable):
            raise TypeError(
                f"MeadowOperator argument python_callable= must be callable, "
                f"got {type(python_callable).__name__}"
            )
        self.python_callable = python_callable
        self.op_args = list(op_args or [])
        self.op_kwargs = dict(op_kwargs or {})
        self.command = command
        # Checked in execute(), so that a bad value fails the task with a clear message
        # (the issue asks for that) rather than breaking the whole DAG file's import.
        self.host = host
        # Not ``self.resources``: BaseOperator owns that name (Airflow's own resources).
        self.meadow_resources = resources if resources is not None else meadow_resources
        self.deployment = _resolve_awaitable(deployment)
        self.environment_variables = dict(environment_variables or {})
        self.timeout_seconds = timeout_seconds
        self.deferrable = deferrable
        self.durable = durable
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self._job_id: str | None = None
        self._meadow_host: Host | None = None

    # -- inputs ---------------------------------------------------------------------

    def _bad(self, message: str) -> AirflowFailException:
        # AirflowFailException: a wrong argument will not be right on the next retry.
        return AirflowFailException(f"{self.task_id}: {message}")

    def _resolve_host(self) -> Host:
        host = default_host() if self.host is None else self.host
        if not isinstance(host, Host):
            raise self._bad(
                f"MeadowOperator argument host= must be a meadow_core Host such as "
                f"LocalHost(), got {type(host).__name__} {host!r}"
            )
        if self.region_name is not None:
            # Kept for DAGs written before hosts carried their region themselves.
            host = host_from_spec(host_to_spec(host), region_name=self.region_name)
        if self.aws_conn_id is not None:
            try:
                BaseHook.get_connection(self.aws_conn_id)
            except Exception as exc:
                raise self._bad(
                    f"MeadowOperator argument aws_conn_id={self.aws_conn_id!r}: no Airflow "
                    f"connection with that id ({type(exc).__name__})"
                ) from None
            if not host.takes_credentials:
                self.log.info(
                    "aws_conn_id=%r is checked but unused: %s takes no credentials",
                    self.aws_conn_id,
                    type(host).__name__,
                )
        return host

    @contextlib.contextmanager
    def _credentials(self, host: Host) -> Iterator[None]:
        """Run the block as connection ``aws_conn_id`` when the host takes credentials."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(connection_scope(host, self.aws_conn_id))
            except ConnectionCredentialsError as exc:
                raise self._bad(
                    f"MeadowOperator argument aws_conn_id={self.aws_conn_id!r} {exc}"
                ) from None
            yield

    def _check_inputs(self, host: Host) -> Host:
        """Validate what can be validated before anything is launched; name the argument.
        Runs inside ``_credentials``: a cloud host's checks may ask its cloud."""
        if self.meadow_resources is not None and not isinstance(self.meadow_resources, Resources):
            raise self._bad(
                f"MeadowOperator argument resources= must be meadow_core.Resources, got "
                f"{type(self.meadow_resources).__name__} {self.meadow_resources!r}"
            )
        if self.meadow_resources is not None:
            try:
                host.check_resources(self.meadow_resources)
            except UnsatisfiableResourcesError as exc:
                raise self._bad(
                    f"MeadowOperator argument resources={self.meadow_resources!r} cannot be met "
                    f"by {type(host).__name__}: {exc}"
                ) from None
        if self.deployment is not None and not isinstance(self.deployment, Deployment):
            raise self._bad(
                f"MeadowOperator argument deployment= must be a meadow_core.Deployment, got "
                f"{type(self.deployment).__name__}"
            )
        if self.timeout_seconds is not None and not (
            isinstance(self.timeout_seconds, int | float) and self.timeout_seconds > 0
        ):
            raise self._bad(
                f"MeadowOperator argument timeout_seconds= must be a positive number, "
                f"got {self.timeout_seconds!r}"
            )
        if not isinstance(self.environment_variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.environment_variables.items()
        ):
            raise self._bad(
                "MeadowOperator argument environment_variables= must map strings to strings"
            )
        return host

    def _deployment(self) -> Deployment:
        deployment = self.deployment or Deployment()
        if self.environment_variables:
            merged = {**deployment.environment_variables, **self.environment_variables}
            deployment = dataclasses.replace(deployment, environment_variables=merged)
        return deployment

    # -- the job ----------------------------------------------------------------------

    @staticmethod
    def job_id_for(context: Context) -> str:
        """The job id of this try: DAG id, run id, task id, map index and try number."""
        ti = context["ti"]
        return deterministic_job_id(
            "airflow",
            ti.dag_id,
            ti.run_id,
            ti.task_id,
            ti.map_index,
            ti.try_number,
            prefix=f"{ti.dag_id}.{ti.task_id}",
        )

    def _state(self, job_id: str, host: Host) -> str | None:
        try:
            return get_job_sync(job_id, host).state
        except JobNotFoundError:
            return None

    def _find_job(self, context: Context, host: Host) -> tuple[str, bool]:
        """The job this try works with, and whether it exists already (reattach).

        Decision: the job id includes the try number, so a retry after a *remote* failure
        runs the code again. The job id of the try in flight is also kept in
        ``task_state_store``; a later try (the worker died, or Airflow lost the task)
        finds it there and reattaches while it is still queued or running. A job that
        already ended is never reused by a later try, so clearing a finished task runs
        it again; that rule needs no second call to delete the key, which halves the
        operator's overhead.
        """
        job_id = self.job_id_for(context)
        store = context.get("task_state_store") if self.durable else None
        # On try 1 no earlier try can have left a job (a restart of this same try finds
        # its job by the deterministic id), so skip the round trip to the API server.
        first_try = context["ti"].try_number <= 1
        previous = store.get(STATE_KEY) if store is not None and not first_try else None
        for candidate in dict.fromkeys(c for c in (previous, job_id) if isinstance(c, str)):
            state = self._state(candidate, host)
            if state is None:
                continue
            if candidate == job_id or state in _ACTIVE:
                self.log.info(
                    "Reattaching to Meadow job %s (%s) launched by %s, instead of launching "
                    "a second one",
                    candidate,
                    state,
                    "this try" if candidate == job_id else "an earlier try",
                )
                return candidate, True
            self.log.info(
                "The earlier try's Meadow job %s ended %s; launching anew", candidate, state
            )
        if store is not None:
            # Before submitting: a worker lost in between leaves an id that is not found,
            # and the next try launches; never a job nobody knows about.
            store.set(STATE_KEY, job_id)
        return job_id, False

    def _submit(self, host: Host, job_id: str, wait: bool) -> Any:
        """Launch the job; with ``wait``, also wait for it (the log streams from line one)."""
        deployment = self._deployment()
        try:
            if self.command is not None:
                return run_command_sync(
                    self.command,
                    host,
                    self.meadow_resources,
                    deployment,
                    wait_for_result=wait,
                    job_id=job_id,
                    timeout_seconds=self.timeout_seconds,
                )
            assert self.python_callable is not None
            _ship_by_value(self.python_callable)
            return run_function_sync(
                self.python_callable,
                host,
                self.meadow_resources,
                deployment,
                args=resolve_meadow_results(list(self.op_args)),
                kwargs=resolve_meadow_results(dict(self.op_kwargs)),
                wait_for_result=wait,
                job_id=job_id,
                timeout_seconds=self.timeout_seconds,
            )
        except TaskException:
            raise
        except (InvalidRequestError, NotImplementedError) as exc:
            # Refused before anything ran (unpicklable argument, unsupported deployment).
            raise self._bad(f"Meadow refused the job: {type(exc).__name__}: {exc}") from None

    # -- execution --------------------------------------------------------------------

    def launch(self, context: Context) -> str:
        """Find or launch this task's job without waiting for it; returns the job id.

        What the deferrable path does before it defers; also a hook for subclasses that
        want to hand the job to something else.
        """
        host = self._resolve_host()
        with self._credentials(host):
            return self._launch(context, self._check_inputs(host))

    def _launch(self, context: Context, host: Host) -> str:
        job_id, existing = self._find_job(context, host)
        self._job_id, self._meadow_host = job_id, host
        if not existing:
            self._submit(host, job_id, wait=False)
            self.log.info("Launched Meadow job %s on %s", job_id, type(host).__name__)
        return job_id

    def execute(self, context: Context) -> Any:
        host = self._resolve_host()
        with self._credentials(host):
            self._check_inputs(host)
            if self.deferrable:
                job_id = self._launch(context, host)
                self.defer(
                    trigger=MeadowJobTrigger(
                        job_id=job_id,
                        host=host_to_spec(host),
                        aws_conn_id=self.aws_conn_id,
                    ),
                    method_name="execute_complete",
                    kwargs={"job_id": job_id},
                )
            return self._wait_here(context, host)

    def _wait_here(self, context: Context, host: Host) -> Any:
        job_id, existing = self._find_job(context, host)
        self._job_id, self._meadow_host = job_id, host
        into_log = _IntoTaskLog(self.log)
        with route_logs(job_id, into_log):
            if existing:
                wait: Callable[[], Any] = lambda: wait_for_job_sync(job_id, host)  # noqa: E731
            else:
                self.log.info("Launching Meadow job %s on %s", job_id, type(host).__name__)
                wait = lambda: self._submit(host, job_id, wait=True)  # noqa: E731
                # Watched from before the submission: the stream is the whole log.
                into_log.complete = True
            return self._collect(context, host, job_id, wait, into_log)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, job_id: str | None = None
    ) -> Any:
        """Resumed on a worker after the trigger fired: read the result and the log."""
        event = event or {}
        job_id = event.get("job_id") or job_id
        if not job_id or event.get("status") == "error":
            raise MeadowRemoteError(
                f"{self.task_id}: {event.get('message', 'the Meadow trigger sent no job id')}"
            )
        host = self._resolve_host()
        self._job_id, self._meadow_host = job_id, host
        with self._credentials(host):
            self._check_inputs(host)
            return self._collect(
                context, host, job_id, lambda: wait_for_job_sync(job_id, host), None
            )

    def _collect(
        self,
        context: Context,
        host: Host,
        job_id: str,
        wait: Callable[[], Any],
        streamed: _IntoTaskLog | None,
    ) -> Any:
        """Wait for the job; copy its stored log if none of it streamed; value to XCom."""
        try:
            value = wait()
        except TaskException as exc:
            if exc.kind is ErrorKind.RESULT_NOT_UNPICKLABLE:
                # The value exists, this worker cannot rebuild it: it stays in Meadow.
                self._copy_log_unless_streamed(job_id, host, streamed)
                return self._to_xcom(job_id, host, None, "value this worker cannot unpickle", False)
            completion = getattr(exc, "completion", None)
            if completion is not None and (streamed is None or not streamed.lines):
                for line in completion.log.splitlines():
                    self.log.info("[meadow] %s", line)
            else:
                self._copy_log_unless_streamed(job_id, host, streamed)
            self.log.error(
                "Meadow job %s failed: %s: %s\nRemote traceback:\n%s",
                job_id,
                exc.remote_type,
                exc.remote_message,
                exc.remote_traceback.rstrip(),
            )
            raise MeadowRemoteError(
                f"{exc.remote_type}: {exc.remote_message} (Meadow job {job_id}, attempt "
                f"{exc.attempt}; remote traceback in the log above)"
            ) from None
        except MeadowError as exc:
            raise MeadowRemoteError(f"Meadow job {job_id}: {type(exc).__name__}: {exc}") from None
        if isinstance(value, JobCompletion):
            if streamed is None or not streamed.lines:
                for line in value.log.splitlines():
                    self.log.info("[meadow] %s", line)
            lines = [line for line in value.log.splitlines() if line.strip()]
            return lines[-1] if lines else None
        self._copy_log_unless_streamed(job_id, host, streamed)
        return self._to_xcom(job_id, host, value, type(value).__qualname__)

    def _copy_log_unless_streamed(
        self, job_id: str, host: Host, streamed: _IntoTaskLog | None
    ) -> None:
        # A job that ended before this try attached (deferral, reattach) streamed nothing.
        if streamed is None or not (streamed.lines or streamed.complete):
            self._copy_log(job_id, host)

    def _copy_log(self, job_id: str, host: Host) -> None:
        """The stored remote log, for output that did not stream into this try's log."""
        try:
            text = read_task_log_sync(job_id, 0, host)
        except MeadowError as exc:
            self.log.warning("Could not read the log of Meadow job %s: %s", job_id, exc)
            return
        for line in text.splitlines():
            self.log.info("[meadow] %s", line)

    def _to_xcom(
        self, job_id: str, host: Host, value: Any, type_name: str, storable: bool = True
    ) -> Any:
        """The value if XCom can hold it, else a reference to it in Meadow's store."""
        if storable and (not self.do_xcom_push or xcom_can_store(value)):
            return value
        reference = make_reference(job_id, host, type_name, self.aws_conn_id)
        self.log.warning("%s", reference["message"])
        return reference

    def on_kill(self) -> None:
        """The task was killed (timeout, mark failed, shutdown): cancel the remote job."""
        if self._job_id is not None and self._meadow_host is not None:
            try:
                with self._credentials(self._meadow_host):
                    cancel_job_sync(self._job_id, self._meadow_host)
                self.log.info("Cancelled Meadow job %s", self._job_id)
            except JobNotFoundError:
                pass
