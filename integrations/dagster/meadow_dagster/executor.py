"""``meadow_executor``: run each step of a Dagster job on a Meadow host.

The orchestrating process keeps the run: it decides which steps are ready, submits
each one to Meadow as a function job (``_remote.execute_step``), and writes the
events the step produced remotely into the run's event log. The remote side opens no
Dagster instance storage of the orchestrator (see README.md, "no shared database").
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any, Literal

from dagster import Any as DagsterAny
from dagster import (
    DagsterError,
    Field,
    Map,
    Noneable,
    Permissive,
    Selector,
    StringSource,
    build_resources,
    executor,
)
from dagster import (
    _check as check,
)
from dagster._core.definitions.executor_definition import (
    ExecutorDefinition,
    multiple_process_executor_requirements,
)
from dagster._core.errors import (
    DagsterExecutionInterruptedError,
    DagsterInvariantViolationError,
    DagsterUnmetExecutorRequirementsError,
)
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.objects import ErrorSource, StepFailureData
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.step import ExecutionStep
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.execution.tags import get_tag_concurrency_limits_config
from dagster._core.executor.base import Executor
from dagster._core.executor.init import InitExecutorContext
from dagster._core.storage.compute_log_manager import ComputeIOType
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._serdes import deserialize_value, serialize_value
from dagster._utils.error import SerializableErrorInfo, serializable_error_info_from_exc_info

from meadow_core import (
    Deployment,
    Host,
    HostConfigError,
    HostSetting,
    MeadowError,
    Resources,
    TaskException,
    cancel_job_sync,
    deterministic_job_id,
    host_class,
    host_from_config,
    host_types,
    route_logs,
    run_function_sync,
)
from meadow_dagster._remote import EVENT_PREFIX, StepPayload, decode_entry, execute_step
from meadow_dagster.credentials import MeadowCredentials

#: The logger Meadow hands remote output to (see ``meadow_core.route_logs``).
_REMOTE_LOGGER = "meadow"
#: A step's output is written to the compute log at least this often (seconds) ...
_CAPTURE_INTERVAL = 0.5
#: ... or when this many lines wait, and when the step ends.
_CAPTURE_BATCH = 500

#: Op tag holding a step's Meadow resources, e.g. ``'{"logical_cpu": 2, "memory_gb": 4}'``.
RESOURCES_TAG = "meadow/resources"

_RESOURCE_FIELDS = ("logical_cpu", "memory_gb", "gpus", "gpu_memory", "max_eviction_rate")


class MeadowDagsterConfigError(DagsterInvariantViolationError):
    """The job cannot run on Meadow as configured; the message names the fix."""


class MeadowUnmetRequirementsError(MeadowDagsterConfigError, DagsterUnmetExecutorRequirementsError):
    """The job breaks a requirement of running steps on other machines; also Dagster's
    own error type for that, so code catching it for any executor catches this too."""


def _host_from_config(config: Mapping[str, Any]) -> Host:
    """The host named by the executor's ``host`` selector: ``{<type>: {<settings>}}``."""
    ((name, settings),) = dict(config).items()
    try:
        return host_from_config({"type": name, **(settings or {})})
    except HostConfigError as exc:
        raise MeadowDagsterConfigError(f"meadow_executor host {name!r}: {exc}") from exc


def parse_resources(value: object, where: str) -> Resources:
    """``Resources`` from an op tag value (JSON text or a mapping)."""
    data: object = value
    if isinstance(value, str):
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            raise MeadowDagsterConfigError(
                f"{where}: tag {RESOURCES_TAG!r} must be JSON such as "
                f'\'{{"logical_cpu": 2, "memory_gb": 4}}\', got {value!r} ({exc})'
            ) from exc
    if not isinstance(data, dict) or set(data) - set(_RESOURCE_FIELDS):
        raise MeadowDagsterConfigError(
            f"{where}: tag {RESOURCES_TAG!r} must be a JSON object with keys among "
            f"{', '.join(_RESOURCE_FIELDS)}; got {value!r}"
        )
    try:
        return Resources(**data)
    except (TypeError, ValueError) as exc:
        raise MeadowDagsterConfigError(f"{where}: tag {RESOURCES_TAG!r}: {exc}") from exc


def _without_credentials(run: Any) -> Any:
    """The run as its steps see it: the executor's credentials stay in this process.
    A step on a machine needs none of them (it has the machine's own), and an
    ``{env: NAME}`` value would not resolve there."""
    execution = dict(run.run_config.get("execution") or {})
    config = dict(execution.get("config") or {})
    if config.get("credentials") is None:
        return run
    config["credentials"] = None
    execution["config"] = config
    return run._replace(run_config={**run.run_config, "execution": execution})


def host_credentials(
    host: Host, credentials: object | None
) -> contextlib.AbstractContextManager[object]:
    """``host.credentials(credentials)``, or nothing when none are configured."""
    if credentials is None or (isinstance(credentials, Mapping) and not credentials):
        return contextlib.nullcontext()
    if isinstance(credentials, Mapping):
        return host.credentials(dict(credentials))
    return host.credentials(credentials)


def credentials_from_resource(init_context: InitExecutorContext, key: str) -> object | None:
    """What the job's ``MeadowCredentials`` resource under ``key`` gives the host, built
    here (``EnvVar`` values resolved in this process); None if the job has none."""
    resource_def = init_context.job.get_definition().resource_defs.get(key)
    if resource_def is None:
        return None
    try:
        with build_resources({key: resource_def}) as resources:
            value = getattr(resources, key)
    except DagsterError as exc:
        raise MeadowDagsterConfigError(
            f'meadow_executor could not build the credentials resource "{key}": {exc}'
        ) from exc
    if not isinstance(value, MeadowCredentials):
        raise MeadowDagsterConfigError(
            f'resource "{key}" is a {type(value).__name__}, but meadow_executor takes its '
            "credentials from a MeadowCredentials resource under that key: use one, or "
            "set the executor's credentials_resource to another key."
        )
    return value.for_host()


class MeadowExecutor(Executor):
    """Runs each ready step as one Meadow function job and relays its events."""

    def __init__(
        self,
        host: Host,
        retries: RetryMode,
        default_resources: Resources | None,
        environment_variables: Mapping[str, str],
        max_concurrent: int,
        timeout_seconds: float | None,
        cancel_check_interval: float = 1.0,
        credentials: object | None = None,
        tag_concurrency_limits: list[dict[str, Any]] | None = None,
    ) -> None:
        self.host = host
        self.credentials = dict(credentials) if isinstance(credentials, Mapping) else credentials
        self._retries = retries
        self.default_resources = default_resources
        self.environment_variables = dict(environment_variables)
        self.max_concurrent = max_concurrent
        self.timeout_seconds = timeout_seconds
        self.cancel_check_interval = cancel_check_interval
        self.tag_concurrency_limits = list(tag_concurrency_limits or [])

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def _credentials(self) -> contextlib.AbstractContextManager[object]:
        """The configured credentials applied to the host for a block (the host's own
        hook decides what they mean; a host that needs none gets none)."""
        return host_credentials(self.host, self.credentials)

    # -- validation at run start --------------------------------------------------------

    def step_resources(self, step: ExecutionStep) -> Resources | None:
        """The step's resources: its ``meadow/resources`` tag, else the executor default."""
        tag = step.tags.get(RESOURCES_TAG)
        if tag is None:
            return self.default_resources
        return parse_resources(tag, f'op "{step.key}"')

    def check_plan(self, execution_plan: ExecutionPlan) -> None:
        """Fail before any step runs if a step asks for what the host can never give."""
        for step in execution_plan.get_all_steps_in_topo_order():
            resources = self.step_resources(step)
            if resources is None:
                continue
            try:
                with self._credentials():
                    self.host.check_resources(resources)
            except MeadowError as exc:
                raise MeadowDagsterConfigError(
                    f'op "{step.key}": tag {RESOURCES_TAG!r} asks for {resources}, which '
                    f"this Meadow host cannot provide: {exc}. Lower the op's "
                    f"{RESOURCES_TAG} tag or pick a bigger host."
                ) from exc

    # -- the loop -------------------------------------------------------------------------

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        """Launch ready steps on Meadow, relay their events, fail crashed ones."""
        check.inst_param(plan_context, "plan_context", PlanOrchestrationContext)
        self.check_plan(execution_plan)
        recon_job = plan_context.reconstructable_job
        origin = serialize_value(recon_job.get_python_origin())
        run_text = serialize_value(_without_credentials(plan_context.dagster_run))
        load_data = (
            serialize_value(execution_plan.repository_load_data)
            if execution_plan.repository_load_data is not None
            else None
        )
        instance = plan_context.instance
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps on Meadow host {self.host!r}",
            event_specific_data=EngineEventData(),
        )
        finished: queue.Queue[_Message] = queue.Queue()
        running: dict[str, str] = {}  # step key -> Meadow job id
        attempts: dict[str, _Attempt] = {}  # Meadow job id -> its step attempt
        stopping = False
        last_cancel_check = time.monotonic()
        with (
            InstanceConcurrencyContext(instance, plan_context.dagster_run) as concurrency,
            ActiveExecution(
                execution_plan,
                retry_mode=self.retries,
                max_concurrent=self.max_concurrent,
                tag_concurrency_limits=self.tag_concurrency_limits,
                instance_concurrency_context=concurrency,
            ) as active,
        ):
            try:
                while (not stopping and not active.is_complete) or running:
                    if not stopping and (
                        active.check_for_interrupts()
                        or self._run_canceling(plan_context, last_cancel_check)
                    ):
                        stopping = True
                        active.mark_interrupted()
                        yield DagsterEvent.engine_event(
                            plan_context,
                            "Run termination requested: cancelling Meadow jobs "
                            + ", ".join(sorted(running.values())),
                            EngineEventData.interrupted(list(running)),
                        )
                        self._cancel_all(running)
                    if time.monotonic() - last_cancel_check > self.cancel_check_interval:
                        last_cancel_check = time.monotonic()

                    while not stopping:
                        steps = active.get_steps_to_execute(
                            limit=self.max_concurrent - len(running)
                        )
                        yield from active.concurrency_event_iterator(plan_context)
                        if not steps:
                            break
                        for step in steps:
                            yield from self._launch(
                                plan_context,
                                active,
                                step,
                                origin,
                                run_text,
                                load_data,
                                finished,
                                running,
                                attempts,
                            )

                    try:
                        message = finished.get(timeout=0.2 if running else 0.01)
                    except queue.Empty:
                        for waiting in attempts.values():  # output that waits too long
                            self._capture(plan_context, waiting, None)
                        yield from active.plan_events_iterator(plan_context)
                        continue
                    attempt = attempts.get(message.job_id)
                    if attempt is None:
                        continue  # a late line of an attempt already finished
                    if message.kind == "entry":
                        if message.index == attempt.delivered:  # in order, else at the end
                            yield from self._write(plan_context, active, attempt, message.entries)
                        continue
                    if message.kind == "line":
                        self._capture(plan_context, attempt, message.line)
                        continue
                    del attempts[message.job_id]
                    self._capture(plan_context, attempt, None, force=True)
                    key = attempt.step_key
                    if running.get(key) != message.job_id:
                        # Its STEP_UP_FOR_RETRY came live and the next attempt already
                        # runs: this job's last entries go into the run, nothing more.
                        if isinstance(message.outcome, str):
                            rest = _entries(message.outcome)[attempt.delivered :]
                            yield from self._write(plan_context, active, attempt, rest, feed=False)
                        continue
                    del running[key]
                    outcome = message.outcome
                    if stopping and not isinstance(outcome, str):
                        # Cancelled by the interrupt: fail it as Dagster's executors do,
                        # so no step stays "started".
                        yield from self._interrupted(plan_context, active, key)
                    else:
                        yield from self._finish(plan_context, active, attempt, outcome)
                    active.verify_complete(plan_context, key)
                    yield from active.plan_events_iterator(plan_context)
            except BaseException:
                if running:
                    self._cancel_all(running)
                raise
            if stopping:
                yield DagsterEvent.engine_event(
                    plan_context, "Meadow executor: cancelled all running steps", EngineEventData()
                )
                raise DagsterExecutionInterruptedError()

    def _run_canceling(self, plan_context: PlanOrchestrationContext, last_check: float) -> bool:
        """Whether someone asked to terminate the run (polled once per interval)."""
        if time.monotonic() - last_check <= self.cancel_check_interval:
            return False
        run = plan_context.instance.get_run_by_id(plan_context.run_id)
        return run is not None and run.status in (
            DagsterRunStatus.CANCELING,
            DagsterRunStatus.CANCELED,
        )

    def _cancel_all(self, running: Mapping[str, str]) -> None:
        for job_id in list(running.values()):
            with contextlib.suppress(MeadowError), self._credentials():
                cancel_job_sync(job_id, self.host)

    def _launch(
        self,
        plan_context: PlanOrchestrationContext,
        active: ActiveExecution,
        step: ExecutionStep,
        origin: str,
        run_text: str,
        load_data: str | None,
        finished: queue.Queue[_Message],
        running: dict[str, str],
        attempts: dict[str, _Attempt],
    ) -> Iterator[DagsterEvent]:
        known_state = active.get_known_state()
        attempt = known_state.get_retry_state().get_attempt_count(step.key)
        job_id = deterministic_job_id(plan_context.run_id, step.key, attempt)
        payload = StepPayload(
            job_origin=origin,
            dagster_run=run_text,
            step_key=step.key,
            known_state=serialize_value(known_state),
            retry_mode=self.retries.value,
            repository_load_data=load_data,
        )
        resources = self.step_resources(step)
        step_context = plan_context.for_step(step)
        event = DagsterEvent.step_worker_starting(
            step_context,
            f'Launching step "{step.key}" on Meadow (job {job_id}, resources {resources}).',
            metadata={"meadow_job_id": job_id},
        )
        yield event
        active.handle_event(event)
        running[step.key] = job_id
        attempts[job_id] = _Attempt(step.key)

        def relay(record: logging.LogRecord) -> None:
            """A line of the step's output: an event for the run, or output to capture."""
            line = record.getMessage()
            decoded = decode_entry(line)
            if decoded is not None:
                index, text = decoded
                entry = deserialize_value(text, EventLogEntry)
                finished.put(_Message(job_id, "entry", index=index, entries=[entry]))
            elif not line.startswith(EVENT_PREFIX):
                finished.put(_Message(job_id, "line", line=line))
                # Still shown where Meadow shows remote output (not routed again).
                logging.getLogger(_REMOTE_LOGGER).log(record.levelno, "%s", line)

        def run() -> None:
            try:
                with self._credentials(), route_logs(job_id, relay):
                    result: str = run_function_sync(
                        execute_step,
                        self.host,
                        resources,
                        Deployment(environment_variables=self.environment_variables),
                        args=(payload,),
                        job_id=job_id,
                        timeout_seconds=self.timeout_seconds,
                    )
                finished.put(_Message(job_id, "done", outcome=result))
            except BaseException as exc:  # delivered to the executor loop
                finished.put(_Message(job_id, "done", outcome=exc))

        threading.Thread(target=run, name=f"meadow-step-{step.key}", daemon=True).start()

    def _interrupted(
        self, plan_context: PlanOrchestrationContext, active: ActiveExecution, key: str
    ) -> Iterator[DagsterEvent]:
        """The ``STEP_FAILURE`` of a step whose Meadow job the interrupt cancelled."""
        step_context = plan_context.for_step(active.get_step_by_key(key))
        try:
            raise DagsterExecutionInterruptedError(
                f'step "{key}" was interrupted: its Meadow job was cancelled'
            )
        except DagsterExecutionInterruptedError:
            error = serializable_error_info_from_exc_info(sys.exc_info())
        failure = DagsterEvent.step_failure_event(
            step_context,
            StepFailureData(
                error=error, user_failure_data=None, error_source=ErrorSource.INTERRUPT
            ),
        )
        active.handle_event(failure)
        yield failure

    def _write(
        self,
        plan_context: PlanOrchestrationContext,
        active: ActiveExecution,
        attempt: _Attempt,
        entries: list[EventLogEntry],
        feed: bool = True,
    ) -> list[DagsterEvent]:
        """Write the attempt's next remote entries into the run and (if ``feed``) give
        its events to ``ActiveExecution``; a ``LOGS_CAPTURED`` one says where its
        output goes. Returns the events, for the executor to yield."""
        events = []
        for entry in entries:
            attempt.delivered += 1
            if entry.run_id != plan_context.run_id:
                continue
            event = entry.dagster_event
            if event is not None and event.event_type_value == "LOGS_CAPTURED":
                manager = plan_context.instance.compute_log_manager
                file_key = event.logs_captured_data.file_key
                attempt.log_key = list(manager.build_log_key_for_run(plan_context.run_id, file_key))
                self._capture(plan_context, attempt, None, force=True)
            plan_context.instance.handle_new_event(entry)
            if event is not None:
                events.append(event)
                if feed:
                    active.handle_event(event)
        return events

    def _capture(
        self,
        plan_context: PlanOrchestrationContext,
        attempt: _Attempt,
        line: str | None,
        force: bool = False,
    ) -> None:
        """Append the step's output to Dagster's compute log (what the UI shows as the
        step's stdout), holding lines until the step's log key is known and writing
        them in batches (a chatty step must not cost a file open per line)."""
        if line is not None:
            attempt.lines.append(line)
        if attempt.log_key is None or not attempt.lines:
            return
        due = time.monotonic() - attempt.written_at > _CAPTURE_INTERVAL
        if not (force or due or len(attempt.lines) >= _CAPTURE_BATCH):
            return
        attempt.written_at = time.monotonic()
        manager = plan_context.instance.compute_log_manager
        with (
            contextlib.suppress(Exception),  # a log that cannot be written fails no step
            manager.open_log_stream(attempt.log_key, ComputeIOType.STDOUT) as stream,
        ):
            text = "".join(f"{line}\n" for line in attempt.lines)
            # Typed as bytes, but the local manager opens its files in text mode.
            out: IO[Any] | None = stream
            if isinstance(out, io.TextIOBase):
                out.write(text)
            elif out is not None:
                out.write(text.encode())
        attempt.lines.clear()

    def _finish(
        self,
        plan_context: PlanOrchestrationContext,
        active: ActiveExecution,
        attempt: _Attempt,
        outcome: str | BaseException,
    ) -> Iterator[DagsterEvent]:
        """Write the remote step's events not yet written live into the run, or fail
        the step if it died (what it wrote live stays)."""
        key = attempt.step_key
        step_context = plan_context.for_step(active.get_step_by_key(key))
        if isinstance(outcome, str):
            rest = _entries(outcome)[attempt.delivered :]
            yield from self._write(plan_context, active, attempt, rest)
            return
        error = _error_info(outcome)
        yield DagsterEvent.engine_event(
            step_context,
            f'Meadow job for step "{key}" did not return: {error.message}',
            EngineEventData.engine_error(error),
        )
        failure = self.log_failure_or_retry_event_after_error(
            step_context, error, active.get_known_state()
        )
        active.handle_event(failure)
        yield failure


def _entries(outcome: str) -> list[EventLogEntry]:
    """The event log entries a remote step returned."""
    entries: list[EventLogEntry] = deserialize_value(outcome, list)  # type: ignore[arg-type]
    return entries


@dataclasses.dataclass
class _Attempt:
    """One Meadow job (one attempt of a step) as the executor loop sees it."""

    step_key: str
    delivered: int = 0  # remote entries written into the run so far, in order
    log_key: list[str] | None = None  # where its output goes in the compute log
    lines: list[str] = dataclasses.field(default_factory=list)  # output not yet written
    written_at: float = 0.0  # when output was last written (time.monotonic)


@dataclasses.dataclass
class _Message:
    """From a step's thread to the loop: an entry seen live, an output line, or the end."""

    job_id: str
    kind: Literal["entry", "line", "done"]
    index: int = 0
    entries: list[EventLogEntry] = dataclasses.field(default_factory=list)
    line: str = ""
    outcome: str | BaseException = ""


def _error_info(exc: BaseException) -> SerializableErrorInfo:
    """A Dagster error carrying the remote type and traceback when there is one."""
    if isinstance(exc, TaskException):
        stack = exc.remote_traceback.splitlines(keepends=True) if exc.remote_traceback else []
        return SerializableErrorInfo(
            message=f"{exc.remote_type}: {exc.remote_message}\n",
            stack=stack,
            cls_name=exc.remote_type,
        )
    try:
        raise exc
    except BaseException:
        return serializable_error_info_from_exc_info(sys.exc_info())


# -- the executor definition ------------------------------------------------------------


_DAGSTER_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "str_list": [str],
    "any": DagsterAny,
}


def _setting_field(setting: HostSetting) -> Field:
    config_type = _DAGSTER_TYPES[setting.kind]
    if setting.nullable:
        config_type = Noneable(config_type)
    if setting.required:
        return Field(config_type, is_required=True, description=setting.description or None)
    return Field(
        config_type, default_value=setting.default, description=setting.description or None
    )


def _host_type_field(name: str) -> Field:
    """One registered host type's settings as Dagster fields; a type that cannot be
    imported here (its SDK is missing) takes any settings and fails when used, naming
    what to install."""
    try:
        cls = host_class(name)
    except HostConfigError as exc:
        return Field(Permissive(), is_required=False, description=str(exc))
    fields = {s.name: _setting_field(s) for s in cls.config_schema()}
    summary = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    return Field(fields, is_required=False, description=summary)


def host_schema() -> Selector:
    """``host: {<type>: {<settings>}}`` for every registered host type, built from the
    hosts themselves: a new setting or a new cloud needs no change here."""
    return Selector({name: _host_type_field(name) for name in host_types()})


def _is_shareable(resource_def: object) -> bool:
    """Whether an IO manager stores outputs where every Meadow machine reaches them."""
    from meadow_dagster.io_manager import MeadowIOManager

    cls = getattr(resource_def, "configurable_resource_cls", None) or type(resource_def)
    return isinstance(cls, type) and issubclass(cls, MeadowIOManager)


def _check_job(init_context: InitExecutorContext, shareable: list[str]) -> None:
    """What Meadow needs beyond Dagster's own checks of a multi-process executor (a
    reconstructable job, a persistent instance, no ``mem_io_manager``: the
    ``requirements`` below, checked by Dagster before the run): outputs every machine
    can read."""
    job_def = init_context.job.get_definition()
    for op_def in job_def.graph.iterate_op_defs():
        for output_def in op_def.output_defs:
            if output_def.dagster_type.is_nothing:
                continue
            key = output_def.io_manager_key
            if key in shareable:
                continue
            resource_def = job_def.resource_defs.get(key)
            if _is_shareable(resource_def):
                continue
            name = type(resource_def).__name__ if resource_def is not None else "none"
            raise MeadowUnmetRequirementsError(
                f'output "{output_def.name}" of op "{op_def.name}" uses IO manager "{key}" '
                f"({name}), which steps on other Meadow machines cannot share. Use "
                f'resource_defs={{"{key}": meadow_io_manager}} (from meadow_dagster), or list '
                f'"{key}" in the executor\'s shareable_io_managers if its storage is reachable '
                "from every machine (e.g. S3)."
            )


@executor(
    name="meadow",
    config_schema={
        "host": Field(host_schema(), default_value={"local": {}}),
        "logical_cpu": Field(
            Noneable(float), default_value=None, description="Default CPUs per step."
        ),
        "memory_gb": Field(
            Noneable(float), default_value=None, description="Default memory (GB) per step."
        ),
        "environment_variables": Field(Map(str, str), default_value={}),
        "max_concurrent": Field(Noneable(int), default_value=None),
        "timeout_seconds": Field(Noneable(float), default_value=None),
        "shareable_io_managers": Field(
            [str],
            default_value=[],
            description="IO manager keys whose storage every Meadow machine reaches.",
        ),
        "retries": get_retries_config(),
        "tag_concurrency_limits": get_tag_concurrency_limits_config(),
        "credentials": Field(
            Noneable(Map(str, StringSource)),
            default_value=None,
            description="Credentials handed to the host (for ec2: access_key_id, "
            "secret_access_key, session_token, region_name, endpoint_url, profile_name); "
            "each value may come from the environment: {env: NAME}.",
        ),
        "credentials_resource": Field(
            str,
            default_value="meadow_credentials",
            description="Key of a MeadowCredentials resource of the job to take the "
            "credentials from instead (built in this process only).",
        ),
    },
    # The multiprocess executor's: Dagster checks them before the run, with its own error.
    requirements=multiple_process_executor_requirements(),
)
def meadow_executor(init_context: InitExecutorContext) -> Executor:
    """Run every step of the job on a Meadow host (LocalHost by default, or a cloud's).

    Per-op resources come from the op tag ``meadow/resources``; outputs must go through
    an IO manager all machines share (``meadow_io_manager``).
    """
    config = init_context.executor_config
    _check_job(init_context, list(config["shareable_io_managers"]))  # type: ignore[call-overload]
    host = _host_from_config(config["host"])  # type: ignore[arg-type]
    credentials: object | None = config["credentials"]
    key = str(config["credentials_resource"])
    from_resource = credentials_from_resource(init_context, key)
    if from_resource is not None:
        if credentials:
            raise MeadowDagsterConfigError(
                f'meadow_executor got credentials both in its config and from resource "{key}": '
                "keep one of them."
            )
        credentials = from_resource
    if credentials and not host.takes_credentials:
        raise MeadowDagsterConfigError(
            f"meadow_executor's credentials need a host that takes them; "
            f"{type(host).__name__} does not"
        )
    default = None
    if config["logical_cpu"] is not None or config["memory_gb"] is not None:
        try:
            default = Resources(
                logical_cpu=config["logical_cpu"],  # type: ignore[arg-type]
                memory_gb=config["memory_gb"],  # type: ignore[arg-type]
            )
            with host_credentials(host, credentials):
                host.check_resources(default)
        except (MeadowError, ValueError) as exc:
            raise MeadowDagsterConfigError(
                f"meadow_executor's logical_cpu/memory_gb cannot be provided: {exc}"
            ) from exc
    max_concurrent = config["max_concurrent"] or 64
    return MeadowExecutor(
        host=host,
        retries=RetryMode.from_config(config["retries"]),  # type: ignore[arg-type]
        default_resources=default,
        environment_variables=config["environment_variables"],  # type: ignore[arg-type]
        max_concurrent=int(max_concurrent),  # type: ignore[call-overload]
        timeout_seconds=config["timeout_seconds"],  # type: ignore[arg-type]
        credentials=credentials,
        tag_concurrency_limits=config.get("tag_concurrency_limits"),  # type: ignore[arg-type]
    )


assert isinstance(meadow_executor, ExecutorDefinition)
