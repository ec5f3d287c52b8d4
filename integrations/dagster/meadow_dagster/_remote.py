"""The remote half of ``meadow_executor``: run one step on a Meadow worker.

This is the function Meadow ships to the host. It receives the step's plan inputs
(job origin, run, known state) as serdes strings and runs the step against a
throwaway in-memory Dagster instance of its own, so the machine never needs the
orchestrator's instance storage (no shared database). Every event and log record the
step produced is printed as it happens (one ``EVENT_PREFIX`` line each, which Meadow
relays to the caller live) and returned at the end, serialized with Dagster's serdes,
for the orchestrator to write into the real run's event log: live if the line arrives,
from the return value if it does not (a line lost or split costs nothing).
"""

from __future__ import annotations

import base64
import dataclasses
import sys
import zlib
from typing import Any

#: Starts an output line that carries one event log entry: ``<prefix><index> <data>``,
#: the data being base64 of zlib of the entry's serdes text.
EVENT_PREFIX = "\x1emeadow-dagster-event "

#: Longer event lines are not printed (the entry comes with the return value): Meadow
#: passes on a line over 1 MiB in pieces, which would reach the step's log as noise.
LIVE_LINE_LIMIT = 512 * 1024


def encode_entry(index: int, entry_text: str) -> str:
    """One output line for the ``index``-th entry of a step (serdes text)."""
    data = base64.b64encode(zlib.compress(entry_text.encode())).decode("ascii")
    return f"{EVENT_PREFIX}{index} {data}"


def decode_entry(line: str) -> tuple[int, str] | None:
    """``(index, serdes text)`` from an event line, or None if it is not a whole one."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        index, data = line[len(EVENT_PREFIX) :].split(" ", 1)
        return int(index), zlib.decompress(base64.b64decode(data, validate=True)).decode()
    except (ValueError, zlib.error):
        return None


@dataclasses.dataclass(frozen=True)
class StepPayload:
    """What one remote step needs; every Dagster object is a serdes string."""

    job_origin: str
    dagster_run: str
    step_key: str
    known_state: str
    retry_mode: str
    repository_load_data: str | None


def execute_step(payload: StepPayload) -> str:
    """Run one step against an in-memory instance; return its event log entries (serdes).

    Runs inside a Meadow worker. Outputs go through the job's IO manager (which must be
    shareable, e.g. ``meadow_io_manager``); events come back as the return value.
    """
    from dagster._core.execution.api import create_execution_plan, execute_plan_iterator
    from dagster._core.execution.retries import RetryMode
    from dagster._serdes import deserialize_value, serialize_value
    from dagster._utils.hosted_user_process import recon_job_from_origin

    origin: Any = deserialize_value(payload.job_origin)
    dagster_run: Any = deserialize_value(payload.dagster_run)
    known_state: Any = deserialize_value(payload.known_state)
    load_data: Any = (
        deserialize_value(payload.repository_load_data) if payload.repository_load_data else None
    )
    # The run may be a subset (op or asset selection): load that subset, as
    # ``dagster api execute_step`` does, or config valid for it would be rejected.
    recon_job = (
        recon_job_from_origin(origin)
        .with_repository_load_data(load_data)
        .get_subset(
            op_selection=dagster_run.resolved_op_selection,
            asset_selection=dagster_run.asset_selection,
            asset_check_selection=dagster_run.asset_check_selection,
        )
    )
    instance = _throwaway_instance()
    run_id = dagster_run.run_id
    entries: list[Any] = []

    def relay(entry: Any) -> None:
        line = encode_entry(len(entries), serialize_value(entry))
        entries.append(entry)
        if len(line) <= LIVE_LINE_LIMIT:
            out = sys.__stdout__ or sys.stdout  # not an op's redirect_stdout
            out.write(line + "\n")
            out.flush()

    # The run itself, so that an op asking context.instance about its run (tags,
    # status) gets an answer; its snapshots stay with the orchestrator.
    instance.add_run(dagster_run._replace(job_snapshot_id=None, execution_plan_snapshot_id=None))
    instance.add_event_listener(run_id, relay)
    try:
        plan = create_execution_plan(
            job=recon_job,
            run_config=dagster_run.run_config,
            step_keys_to_execute=[payload.step_key],
            known_state=known_state,
            repository_load_data=load_data,
        )
        for _ in execute_plan_iterator(
            plan,
            recon_job,
            dagster_run,
            instance=instance,
            retry_mode=RetryMode(payload.retry_mode).for_inner_plan(),
            run_config=dagster_run.run_config,
        ):
            pass
    finally:
        instance._subscribers.pop(run_id, None)  # no public way to remove a listener
        instance.delete_run(run_id)  # and its events
    return serialize_value(entries)


_instance: Any = None


def _throwaway_instance() -> Any:
    """This worker's in-memory Dagster instance, made once.

    Creating one stamps two in-memory SQLite schemas through alembic (about 0.3 s), so
    a warm worker keeps it; each step's events are deleted once they are collected.
    """
    global _instance
    if _instance is None:
        from dagster import DagsterInstance

        _instance = DagsterInstance.ephemeral()
    return _instance
