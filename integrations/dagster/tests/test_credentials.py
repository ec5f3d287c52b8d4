"""Credentials from a ``MeadowCredentials`` resource (issue 13), beside the executor's
``credentials`` config, which keeps working (test_ec2.py runs it on the dev cloud)."""

from collections.abc import Iterator
from pathlib import Path

import dagster_jobs as jobs
import pytest
import recording_host
from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable
from run_records import executor_config

from meadow_core import register_host


@pytest.fixture
def recording_local() -> Iterator[list[object]]:
    """Host type ``local`` is a RecordingLocalHost in this process while the test runs
    (steps run as on LocalHost; the remote side, which validates the same settings,
    is unchanged)."""
    register_host("local", "recording_host:RecordingLocalHost")
    recording_host.SEEN.clear()
    try:
        yield recording_host.SEEN
    finally:
        register_host("local", "meadow_core.hosts.local:LocalHost")


def test_executor_takes_credentials_from_the_resource(
    instance: DagsterInstance,
    work_dir: Path,
    recording_local: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEADOW_DAGSTER_TEST_TOKEN", "s3cret")
    with execute_job(
        reconstructable(jobs.credentials_job),
        instance=instance,
        run_config=executor_config(work_dir),
    ) as result:
        assert result.success  # the steps never needed the variable on their machine
        assert result.output_for_node("total") == 12
    expected = {"token": "s3cret", "user": "analyst"}
    # Handed to the host for every submission (three steps) and more (checks, waits).
    assert recording_local.count(expected) >= 3, recording_local
    assert all(seen == expected for seen in recording_local), recording_local


def test_config_credentials_still_reach_the_host(
    instance: DagsterInstance,
    work_dir: Path,
    recording_local: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEADOW_DAGSTER_TEST_KEY", "from-env")
    config = executor_config(
        work_dir,
        credentials={"key": {"env": "MEADOW_DAGSTER_TEST_KEY"}},
        credentials_resource="none_here",
    )
    with execute_job(
        reconstructable(jobs.pipeline_job), instance=instance, run_config=config
    ) as result:
        assert result.success
    assert recording_local and all(seen == {"key": "from-env"} for seen in recording_local)


def test_credentials_in_both_places_are_rejected_before_any_step(
    instance: DagsterInstance,
    work_dir: Path,
    recording_local: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEADOW_DAGSTER_TEST_TOKEN", "s3cret")
    with execute_job(
        reconstructable(jobs.credentials_job),
        instance=instance,
        run_config=executor_config(work_dir, credentials={"key": "x"}),
        raise_on_error=False,
    ) as result:
        assert not result.success
        run_id = result.run_id
    logs = list(instance.all_logs(run_id))
    assert not [e for e in logs if e.dagster_event_type == DagsterEventType.STEP_START]
    [failure] = [e for e in logs if e.dagster_event_type == DagsterEventType.RUN_FAILURE]
    assert failure.dagster_event is not None
    error = getattr(failure.dagster_event.event_specific_data, "error", None)
    assert error is not None and "both in its config and from resource" in error.to_string()
    assert recording_local == []  # nothing was handed to the host


def test_a_host_that_takes_no_credentials_rejects_the_resource(
    instance: DagsterInstance, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEADOW_DAGSTER_TEST_TOKEN", "s3cret")
    with execute_job(
        reconstructable(jobs.credentials_job),
        instance=instance,
        run_config=executor_config(work_dir),
        raise_on_error=False,
    ) as result:
        assert not result.success
        [failure] = [
            e
            for e in instance.all_logs(result.run_id)
            if e.dagster_event_type == DagsterEventType.RUN_FAILURE
        ]
    assert failure.dagster_event is not None
    error = getattr(failure.dagster_event.event_specific_data, "error", None)
    assert error is not None and "need a host that takes them" in error.to_string()
