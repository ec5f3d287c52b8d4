"""``meadow_executor`` with real Dagster runs on a persistent on-disk instance.

Every step runs in a worker of a Meadow agent that cannot see the instance directory
(see conftest.py); what these tests check is what a Dagster user would see in the
run's result and event log.
"""

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import dagster_jobs as jobs
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    execute_job,
    reconstructable,
)
from run_records import executor_config, run_events, run_logs

from meadow_core import LocalHost, get_job_sync


def _meadow_job_ids(instance: DagsterInstance, run_id: str) -> list[str]:
    ids = []
    for entry in run_events(instance, run_id, DagsterEventType.STEP_WORKER_STARTING):
        assert entry.dagster_event is not None
        metadata = entry.dagster_event.event_specific_data.metadata  # type: ignore[union-attr]
        ids.append(metadata["meadow_job_id"].value)
    return ids


def test_outputs_flow_between_steps_and_events_land_in_the_run(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with execute_job(
        reconstructable(jobs.pipeline_job), instance=instance, run_config=executor_config(work_dir)
    ) as result:
        assert result.success
        assert result.output_for_node("total") == 12
        run_id = result.run_id
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.SUCCESS
    kinds = [e.dagster_event_type for e in run_logs(instance, run_id)]
    for kind in (
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_OUTPUT,
        DagsterEventType.HANDLED_OUTPUT,
        DagsterEventType.LOADED_INPUT,
        DagsterEventType.STEP_SUCCESS,
    ):
        assert kind in kinds, kind
    assert len(run_events(instance, run_id, DagsterEventType.STEP_SUCCESS)) == 3
    # context.log from the remote op, with the remote pid: the step really ran elsewhere.
    messages = [e.user_message for e in run_logs(instance, run_id) if e.dagster_event is None]
    made = [m for m in messages if m.startswith("making numbers in pid")]
    assert made and int(made[0].split()[-1]) != os.getpid()
    assert instance.get_run_stats(run_id).steps_succeeded == 3


def test_per_op_resources_reach_the_host(
    instance: DagsterInstance, work_dir: Path, host: LocalHost
) -> None:
    with execute_job(
        reconstructable(jobs.resources_job), instance=instance, run_config=executor_config(work_dir)
    ) as result:
        assert result.success
        run_id = result.run_id
    [job_id] = _meadow_job_ids(instance, run_id)
    spec = asyncio.run(host.get_spec(job_id))
    assert spec is not None
    assert spec.resources["logical_cpu"] == 2
    assert spec.resources["memory_gb"] == 1.5


def test_remote_exception_fails_the_step_with_the_remote_traceback(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with execute_job(
        reconstructable(jobs.failing_job),
        instance=instance,
        run_config=executor_config(work_dir),
        raise_on_error=False,
    ) as result:
        assert not result.success
        run_id = result.run_id
    [failure] = run_events(instance, run_id, DagsterEventType.STEP_FAILURE)
    assert failure.dagster_event is not None
    error = failure.dagster_event.step_failure_data.error
    assert error is not None
    text = error.to_string()
    assert "PipelineBroke" in text and "remote op failed on purpose with 42" in text
    assert "_explode" in text  # the remote frames are there
    messages = [e.user_message for e in run_logs(instance, run_id) if e.dagster_event is None]
    assert "about to fail" in messages
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE


def test_worker_killed_mid_step_fails_the_step_not_the_run_state(
    instance: DagsterInstance, work_dir: Path
) -> None:
    started = time.monotonic()
    with execute_job(
        reconstructable(jobs.killed_job),
        instance=instance,
        run_config=executor_config(work_dir),
        raise_on_error=False,
    ) as result:
        assert not result.success
        run_id = result.run_id
    assert time.monotonic() - started < 60
    [failure] = run_events(instance, run_id, DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "killed_step"
    assert failure.dagster_event is not None
    error = failure.dagster_event.step_failure_data.error
    assert error is not None and "WorkerCrashed" in error.to_string()
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    assert instance.get_run_stats(run_id).steps_succeeded == 0
    skipped = [e.user_message for e in run_logs(instance, run_id) if e.step_key == "after_killed"]
    assert any("Not executing" in m for m in skipped)


def test_op_retry_policy_reruns_the_step_on_meadow(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with execute_job(
        reconstructable(jobs.flaky_job), instance=instance, run_config=executor_config(work_dir)
    ) as result:
        assert result.success
        assert result.output_for_node("flaky_step") == 3
        run_id = result.run_id
    assert len(run_events(instance, run_id, DagsterEventType.STEP_UP_FOR_RETRY)) == 2
    assert len(run_events(instance, run_id, DagsterEventType.STEP_RESTARTED)) == 2
    assert len(set(_meadow_job_ids(instance, run_id))) == 3  # one Meadow job per attempt


def test_retry_policy_also_covers_a_crashed_worker(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with execute_job(
        reconstructable(jobs.crash_once_job),
        instance=instance,
        run_config=executor_config(work_dir),
    ) as result:
        assert result.success
        assert result.output_for_node("crash_once") == "survived"
        run_id = result.run_id
    [retry] = run_events(instance, run_id, DagsterEventType.STEP_UP_FOR_RETRY)
    assert retry.dagster_event is not None
    error = retry.dagster_event.step_retry_data.error
    assert error is not None and "WorkerCrashed" in error.to_string()


def test_run_termination_cancels_the_meadow_job(
    instance: DagsterInstance, work_dir: Path, host: LocalHost
) -> None:
    outcome: dict[str, Any] = {}

    def run() -> None:
        with execute_job(
            reconstructable(jobs.slow_job),
            instance=instance,
            run_config=executor_config(work_dir),
            raise_on_error=False,
        ) as result:
            outcome["run_id"] = result.run_id
            outcome["success"] = result.success

    thread = threading.Thread(target=run)
    thread.start()
    marker = work_dir / "slow-started"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the slow step never started"
    step_pid = int(marker.read_text())
    [run] = instance.get_runs()
    instance.report_run_canceling(run)  # what "Terminate" in the UI does first
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert outcome["success"] is False
    final = instance.get_run_by_id(outcome["run_id"])
    assert final is not None and final.status == DagsterRunStatus.CANCELED
    # The step in flight ends failed (interrupted), not "started" forever.
    [failure] = run_events(instance, outcome["run_id"], DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "slow_step"
    [job_id] = _meadow_job_ids(instance, outcome["run_id"])
    assert get_job_sync(job_id, host).state == "cancelled"
    deadline = time.monotonic() + 10
    while _alive(step_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(step_pid), "the worker running the step was not killed"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_remote_side_cannot_reach_the_instance_storage(
    instance: DagsterInstance, work_dir: Path, instances_dir: Path, meadow_home: Path
) -> None:
    instance_dir = Path(instance.root_directory)
    assert instance_dir.is_relative_to(instances_dir)
    with execute_job(
        reconstructable(jobs.isolation_job), instance=instance, run_config=executor_config(work_dir)
    ) as result:
        assert result.success
        seen = result.output_for_node("inspect_environment")
        run_id = result.run_id
    # Here the instance directory holds the run's SQLite storage ...
    assert any(instance_dir.rglob("*.db"))
    # ... while the step's process saw an empty directory, no path to it, no open file.
    assert seen["listing"] == []
    assert seen["env_mentions"] == []
    assert seen["open_files"] == []
    assert seen["pid"] != os.getpid()
    assert not str(seen["cwd"]).startswith(str(instances_dir))
    # Nothing Meadow stored for the job (payloads, results, logs) names the instance.
    needle = str(instance_dir).encode()
    for path in (meadow_home / "store").rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
    # And the remote step's events are in the run's event log all the same.
    messages = [e.user_message for e in run_logs(instance, run_id) if e.dagster_event is None]
    assert "remote view of the instance directory: []" in messages
    assert run_events(instance, run_id, DagsterEventType.STEP_SUCCESS)


# -- bad input: each fails at run start and names the fix --------------------------------


def _run_failure_message(instance: DagsterInstance, run_id: str) -> str:
    [failure] = run_events(instance, run_id, DagsterEventType.RUN_FAILURE)
    assert failure.dagster_event is not None
    data = failure.dagster_event.event_specific_data
    error = getattr(data, "error", None)
    return error.to_string() if error is not None else failure.user_message


def test_non_reconstructable_job_is_rejected(instance: DagsterInstance, work_dir: Path) -> None:
    # What a launcher does with a job object it cannot reload elsewhere.
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import execute_run

    run = instance.create_run_for_job(jobs.pipeline_job, run_config=executor_config(work_dir))
    result = execute_run(InMemoryJob(jobs.pipeline_job), run, instance)
    assert not result.success
    message = _run_failure_message(instance, run.run_id)
    # Dagster's own check of a multi-process executor, before any step.
    assert "DagsterUnmetExecutorRequirementsError" in message and "reconstructable()" in message
    assert not run_events(instance, run.run_id, DagsterEventType.STEP_START)


def test_non_shareable_io_manager_is_rejected(instance: DagsterInstance, work_dir: Path) -> None:
    with execute_job(
        reconstructable(jobs.fs_io_job),
        instance=instance,
        run_config=executor_config(work_dir),
        raise_on_error=False,
    ) as result:
        assert not result.success
        message = _run_failure_message(instance, result.run_id)
        assert not run_events(instance, result.run_id, DagsterEventType.STEP_START)
    assert '"io_manager": meadow_io_manager' in message and "local_output" in message
    assert "MeadowUnmetRequirementsError" in message  # a DagsterUnmetExecutorRequirementsError


def test_nothing_outputs_need_no_shared_io_manager(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with execute_job(
        reconstructable(jobs.nothing_outputs_job),
        instance=instance,
        run_config=executor_config(work_dir),
    ) as result:
        assert result.success


def test_impossible_resources_are_rejected_before_any_step(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with execute_job(
        reconstructable(jobs.impossible_job),
        instance=instance,
        run_config=executor_config(work_dir),
        raise_on_error=False,
    ) as result:
        assert not result.success
        message = _run_failure_message(instance, result.run_id)
        assert not run_events(instance, result.run_id, DagsterEventType.STEP_START)
    assert "impossible_step" in message and "meadow/resources" in message
