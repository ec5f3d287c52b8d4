"""What the executor tests share: the run config that points the test jobs' ops at a
work folder, and the run's event log read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance
from dagster._core.events.log import EventLogEntry


def executor_config(work_dir: Path, **executor: Any) -> dict[str, Any]:
    """Run config: ``meadow_executor`` settings, with the ops' work folder in the
    environment of the remote steps."""
    env = {"MEADOW_DAGSTER_TEST_DIR": str(work_dir)}
    return {"execution": {"config": {"environment_variables": env, **executor}}}


def run_logs(instance: DagsterInstance, run_id: str) -> list[EventLogEntry]:
    return list(instance.all_logs(run_id))


def run_events(
    instance: DagsterInstance, run_id: str, kind: DagsterEventType
) -> list[EventLogEntry]:
    return [e for e in run_logs(instance, run_id) if e.dagster_event_type == kind]
