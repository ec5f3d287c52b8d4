"""What task code and adapters see of Meadow: current_task(), the object store, handles,
and how long finished jobs are kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tasks
from tasks import managed_host

from meadow_core import (
    JobNotFoundError,
    LocalHost,
    current_task,
    get_job_sync,
    run_command_sync,
    run_function_sync,
    run_map_sync,
)
from meadow_core._portal import portal


def test_current_task_is_none_outside_meadow() -> None:
    assert current_task() is None


def test_a_task_knows_itself_and_writes_to_the_hosts_store(host: LocalHost) -> None:
    handle = run_map_sync(
        tasks.describe_current_task, [b"a", b"bb"], host=host, wait_for_result=False
    )
    results = sorted(handle.as_completed_sync(), key=lambda r: r.task_id)
    assert [r.result[1:] for r in results] == [(0, 1, b"a"), (1, 1, b"bb")]
    assert {r.result[0] for r in results} == {handle.job_id}
    # The caller reads what the task stored, through the host.
    stored = portal.call(host.read_object(f"adapter-outputs/{handle.job_id}/1"))
    assert stored == b"bb"


def test_the_caller_writes_what_a_task_reads(host: LocalHost) -> None:
    portal.call(host.write_object("adapter-inputs/x", b"from the caller"))
    script = (
        "from meadow_core import current_task; print(current_task().store.get('adapter-inputs/x'))"
    )
    completion = run_command_sync([sys.executable, "-c", script], host=host)
    assert "from the caller" in completion.log


def test_a_command_knows_its_job(host: LocalHost) -> None:
    script = "from meadow_core import current_task; t = current_task(); print(t.job_id, t.attempt)"
    completion = run_command_sync([sys.executable, "-c", script], host=host)
    assert completion.log.split() == [completion.job_id, "1"]


def test_as_completed_of_a_finished_job_replays_every_result(host: LocalHost) -> None:
    handle = run_map_sync(tasks.square, [1, 2, 3], host=host, wait_for_result=False)
    assert handle.wait_sync() == [1, 4, 9]
    assert sorted(r.result for r in handle.as_completed_sync()) == [1, 4, 9]


def test_finished_jobs_are_pruned_after_the_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    with managed_host(home) as first:
        handle = run_function_sync(tasks.chatty, first, args=("x",), wait_for_result=False)
        assert handle.wait_sync() == "x"
        job_id = handle.job_id
    assert get_job_sync(job_id, LocalHost(home=home)).state == "succeeded"
    assert (home / "store" / "logs" / job_id).exists()
    # An agent started with a retention of zero forgets the finished job at once.
    monkeypatch.setenv("MEADOW_RETENTION_DAYS", "0")
    with managed_host(home) as second:
        run_function_sync(tasks.square, second, args=(2,))
        with pytest.raises(JobNotFoundError):
            get_job_sync(job_id, second)
    assert not (home / "store" / "logs" / job_id).exists()


def test_the_bucket_as_store_without_boto3_says_what_to_add() -> None:
    """A task on EC2 in an environment built without boto3 gets told what to add,
    not a bare ModuleNotFoundError from deep inside Meadow."""
    code = (
        "import sys; sys.modules['boto3'] = None\n"
        "from meadow_core.task_context import open_store\n"
        "open_store('s3://meadow-bucket?region=us-east-2')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "needs boto3 in the task's environment" in result.stderr
    assert "add boto3 to the deployment's requirements" in result.stderr
