"""Remote failures, bad inputs, and a retry that reattaches after the worker was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from conftest import DAGS, load_dag, run_dag

from meadow_core import LocalHost, deterministic_job_id, get_job_sync


def test_remote_exception_and_bad_inputs() -> None:
    run = run_dag(load_dag("meadow_failures"))
    assert run.state == "failed"

    # The remote exception fails the task; its remote traceback is in the task log.
    assert run.states[("remote_exception", -1)] == "failed"
    log = run.task_log("remote_exception")
    assert "ValueError: remote boom with n=5" in log
    assert "in inner_step" in log and 'raise ValueError(f"remote boom' in log
    assert "[meadow] about to fail" in log

    # Each bad input fails its own task, naming the argument.
    expected = {
        "bad_host": "MeadowOperator argument host= must be a meadow_core Host",
        "bad_resources": "MeadowOperator argument resources= must be meadow_core.Resources",
        "impossible_resources": "MeadowOperator argument resources=Resources(logical_cpu=4096",
        "unknown_conn": "MeadowOperator argument aws_conn_id='no_such_conn'",
    }
    for task_id, message in expected.items():
        assert run.states[(task_id, -1)] == "failed", task_id
        assert message in run.task_log(task_id), task_id
    # Airflow's timeout kills the task; the remote job is cancelled with it.
    assert run.states[("times_out", -1)] == "failed"
    assert "[meadow] sleeping remotely" in run.task_log("times_out")
    job_id = deterministic_job_id(
        "airflow",
        "meadow_failures",
        run.run_id,
        "times_out",
        -1,
        1,
        prefix="meadow_failures.times_out",
    )
    assert get_job_sync(job_id, LocalHost()).state == "cancelled"

    # A connection that exists passes the check (LocalHost then ignores it, and says so).
    assert run.states[("known_conn", -1)] == "success"
    assert "aws_conn_id='meadow_test_aws' is checked but unused" in run.task_log("known_conn")


def test_retry_reattaches_to_the_running_job() -> None:
    """Try 1 is lost after launching; try 2 finds the job in task_state_store."""
    markers = Path(os.environ["MEADOW_AIRFLOW_TEST_MARKERS"])
    runs = markers / "lost_worker_runs"
    runs.unlink(missing_ok=True)
    (markers / "slow_runs").unlink(missing_ok=True)
    run = run_dag(load_dag("meadow_reattach").partial_subset(["lost_worker"]))
    assert run.states[("lost_worker", -1)] == "success", run.states
    assert run.tries[("lost_worker", -1)] == 2
    assert run.xcom[("lost_worker", -1)] == "finished"
    log = run.task_log("lost_worker")
    assert "simulated loss of the Airflow worker" in log
    assert "Reattaching to Meadow job" in log and "(running) launched by an earlier try" in log
    assert "[meadow] remote job finished" in log
    assert len(runs.read_text().splitlines()) == 1  # the function ran once, not twice


def test_restart_after_sigkill_reattaches() -> None:
    """SIGKILL the whole Airflow process mid-job; running the DAG again finds the job.

    ``dag.test()`` recreates the run, so this is a restart of the same try: the
    deterministic job id (not task_state_store) leads it back to the job.
    """
    markers = Path(os.environ["MEADOW_AIRFLOW_TEST_MARKERS"])
    runs = markers / "slow_runs"
    runs.unlink(missing_ok=True)
    logical_date = datetime(2026, 1, 1, tzinfo=UTC)
    script = (
        "import importlib.util, datetime\n"
        f"path = {str(DAGS / 'meadow_reattach.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('reattach_dag', path)\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"when = datetime.datetime.fromisoformat({logical_date.isoformat()!r})\n"
        "m.DAG.partial_subset(['slow']).test(logical_date=when, run_after=when)\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not runs.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert runs.exists(), "the remote job never started"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the Airflow side dies; the job runs on
        first.wait()

    dag = load_dag("meadow_reattach").partial_subset(["slow"])
    run = run_dag(dag, logical_date=logical_date, run_after=logical_date)
    assert run.states[("slow", -1)] == "success", run.states
    assert run.xcom[("slow", -1)] == "finished"
    log = run.task_log("slow")
    assert "Reattaching to Meadow job" in log
    assert "[meadow] remote job finished" in log
    assert len(runs.read_text().splitlines()) == 1  # the function ran once, not twice
