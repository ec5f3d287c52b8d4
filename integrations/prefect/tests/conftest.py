"""Shared fixtures: one Prefect test server and one LocalHost for the whole session.

The harness server takes 10-20 s to start on this machine, so it is started once;
the LocalHost lives in a throwaway home and its agent is shut down at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The harness server records task runs from events, one per batch by default; a
# 1,000-input map would keep it busy for minutes.
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "500")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL", "1")

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterTaskRunId,
)
from prefect.client.schemas.objects import Log, TaskRun
from prefect.testing.utilities import prefect_test_harness

from meadow_core import LocalHost


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHost]:
    home = tmp_path_factory.mktemp("meadow-home")
    local = LocalHost(home=home, idle_timeout=60)
    try:
        yield local
    finally:
        local.shutdown()


@pytest.fixture
def client(prefect_server: None) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as sync_client:
        yield sync_client


def poll(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    """The first truthy value of ``check()``; the server records runs from events, later."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def task_runs(
    client: SyncPrefectClient,
    flow_run_id: uuid.UUID,
    count: int,
    final: bool = True,
    ready: Callable[[list[TaskRun]], bool] | None = None,
) -> list[TaskRun]:
    """The flow run's task runs once ``count`` of them are recorded (in final states,
    or satisfying ``ready``): the API records states asynchronously, a bit later under
    load."""

    def check() -> list[TaskRun] | None:
        runs: list[TaskRun] = []
        while True:
            page = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=200,
                offset=len(runs),
            )
            runs.extend(page)
            if len(page) < 200:
                break
        if len(runs) < count:
            return None
        if final and not all(r.state is not None and r.state.is_final() for r in runs):
            return None
        if ready is not None and not ready(runs):
            return None
        return runs

    runs = poll(check, timeout=60)
    assert runs, f"the API did not record {count} task runs for flow run {flow_run_id}"
    return runs


def logs_of(client: SyncPrefectClient, task_run_id: uuid.UUID, needle: str) -> list[Log]:
    """The task run's logs in the API, once one contains ``needle``."""

    def check() -> list[Log] | None:
        logs = client.read_logs(
            log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id]))
        )
        return logs if any(needle in log.message for log in logs) else None

    return poll(check, timeout=30) or []


@pytest.fixture
def marker_dir(tmp_path: Path) -> Path:
    return tmp_path
