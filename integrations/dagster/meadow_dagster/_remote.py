"""The remote half of ``meadow_executor``: run one step on a Meadow worker.

This is the function Meadow ships to the host. It receives the step's plan inputs
(job origin, run, known state) as serdes strings and runs the step against a
throwaway in-memory Dagster instance of its own, so the machine never needs the
orchestrator's instance storage (no shared database). Every event and log record the
step produced is returned, serialized with Dagster's serdes, for the orchestrator to
write into the real run's event log.
"""

from __future__ import annotations

import dataclasses
from typing import Any


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
        entries = list(instance.all_logs(run_id))
    finally:
        instance.event_log_storage.delete_events(run_id)
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
