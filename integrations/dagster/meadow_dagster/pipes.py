"""``PipesMeadowClient``: run an external script on a Meadow host with Dagster Pipes.

The orchestrating process stays the step; only the script runs remotely, with nothing
but ``dagster-pipes`` installed there. The Pipes context goes in an environment
variable; the script's Pipes messages go to its stdout, which Meadow relays to the
caller while the script runs (records of the ``meadow`` logger) and stores in full
afterwards. The reader takes messages from the live relay and, once the command ended,
from the stored log any the relay did not deliver, so none is lost or read twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from dagster import AssetExecutionContext, OpExecutionContext
from dagster._annotations import public
from dagster._core.definitions.resource_annotation import TreatAsResourceParam
from dagster._core.errors import DagsterExecutionInterruptedError, DagsterPipesExecutionError
from dagster._core.pipes.client import (
    PipesClient,
    PipesClientCompletedInvocation,
    PipesMessageReader,
    PipesParams,
)
from dagster._core.pipes.context import PipesMessageHandler
from dagster._core.pipes.utils import PipesEnvContextInjector, open_pipes_session
from dagster_pipes import PipesExtras

from meadow_core import (
    Deployment,
    Host,
    JobCompletion,
    LocalHost,
    Resources,
    TaskException,
    cancel_job_sync,
    deterministic_job_id,
    route_logs,
    run_command_sync,
)

_PIPES_KEY = "__dagster_pipes_version"


def _pipes_message(line: str) -> dict[str, Any] | None:
    """The Pipes message a stdout line holds, if it holds one."""
    text = line.strip()
    if not (text.startswith("{") and _PIPES_KEY in text):
        return None
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) and _PIPES_KEY in message else None


class PipesMeadowMessageReader(PipesMessageReader):
    """Reads Pipes messages from a Meadow job's stdout (live relay, then the stored log)."""

    def __init__(self) -> None:
        self._handler: PipesMessageHandler | None = None
        self._lock = threading.Lock()
        self._handled = 0

    @contextlib.contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        self._handler = handler
        self._handled = 0
        try:
            yield {"stdio": "stdout"}
        finally:
            self._handler = None

    def feed_live(self, line: str) -> bool:
        """Handle one relayed line; False if it was not a Pipes message."""
        message = _pipes_message(line)
        if message is None:
            return False
        with self._lock:
            if self._handler is not None:
                self._handler.handle_message(message)  # type: ignore[arg-type]
                self._handled += 1
        return True

    def feed_full_log(self, log: str) -> None:
        """After the command: handle the messages the live relay did not deliver."""
        messages = [m for m in map(_pipes_message, log.splitlines()) if m is not None]
        with self._lock:
            for message in messages[self._handled :]:
                if self._handler is not None:
                    self._handler.handle_message(message)  # type: ignore[arg-type]
            self._handled = max(self._handled, len(messages))

    def no_messages_debug_text(self) -> str:
        return (
            "Attempted to read messages from the script's stdout as relayed by Meadow. Does the "
            "script call open_dagster_pipes() (with the default message writer) and run to the end?"
        )


def _relay(
    reader: PipesMeadowMessageReader, context: OpExecutionContext | AssetExecutionContext
) -> Callable[[logging.LogRecord], None]:
    """Where the command's lines go (a ``route_logs`` target): Pipes messages to the
    reader, other lines to the step log."""

    def relay(record: logging.LogRecord) -> None:
        line = record.getMessage()
        if not reader.feed_live(line):
            context.log.info(line)

    return relay


class PipesMeadowClient(PipesClient, TreatAsResourceParam):
    """A Pipes client that runs its command on a Meadow host (``LocalHost`` by default).

    Args:
        host: where to run; default ``LocalHost()`` (``$MEADOW_HOME``).
        env: environment variables for the command (beside the Pipes bootstrap ones).
        resources: Meadow ``Resources`` for the command (a bigger machine, in the cloud).
        timeout_seconds: kill the command after this long.
    """

    def __init__(
        self,
        host: Host | None = None,
        env: Mapping[str, str] | None = None,
        resources: Resources | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        self.host = host or LocalHost()
        self.env = dict(env or {})
        self.resources = resources
        self.timeout_seconds = timeout_seconds

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    @public
    def run(  # type: ignore[override]
        self,
        *,
        context: OpExecutionContext | AssetExecutionContext,
        command: str | Sequence[str],
        extras: PipesExtras | None = None,
        env: Mapping[str, str] | None = None,
        resources: Resources | None = None,
    ) -> PipesClientCompletedInvocation:
        """Run ``command`` on the host; its Pipes reports become this step's results."""
        reader = PipesMeadowMessageReader()
        step_key = context.op_execution_context.get_step_execution_context().step.key
        job_id = deterministic_job_id(
            context.run.run_id, step_key, "pipes", context.op_execution_context.retry_number
        )
        with open_pipes_session(
            context=context,
            context_injector=PipesEnvContextInjector(),
            message_reader=reader,
            extras=extras,
        ) as session:
            environment = {**self.env, **(env or {}), **session.get_bootstrap_env_vars()}
            try:
                with route_logs(job_id, _relay(reader, context)):
                    completion: JobCompletion[None] = run_command_sync(
                        command,
                        self.host,
                        resources or self.resources,
                        Deployment(environment_variables=environment),
                        job_id=job_id,
                        timeout_seconds=self.timeout_seconds,
                        check=False,
                    )
            except (DagsterExecutionInterruptedError, KeyboardInterrupt):
                context.log.info(f"[pipes] interrupted: cancelling Meadow job {job_id}")
                with contextlib.suppress(Exception):
                    cancel_job_sync(job_id, self.host)
                raise
            except TaskException as exc:
                raise DagsterPipesExecutionError(
                    f"Meadow could not run the command: {exc}"
                ) from exc
            reader.feed_full_log(completion.log)
            if completion.return_code != 0:
                raise DagsterPipesExecutionError(
                    f"External script on Meadow failed with exit code {completion.return_code} "
                    f"(outcome {completion.outcome}, job {job_id}); its output ends with:\n"
                    + completion.log[-2000:]
                )
        return PipesClientCompletedInvocation(session)
