"""Cancelling a flow run through Prefect's API cancels its Meadow jobs.

Production path, reproduced as is: the flow is served by Prefect's own ``Runner``
(``flow.serve``) in a separate process; the test creates a run of the deployment,
waits until its task sleeps on the Meadow side, and sets the flow run ``Cancelling``
through the API, which is what the UI or ``prefect flow-run cancel`` do. The runner
notices, sends the flow run process its cancel intent over Prefect's control channel,
then ``SIGTERM``; the engine turns that into ``TerminationSignal``, exits the task
runner (``MeadowTaskRunner.cancel_all``) and reports ``Cancelled``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
from conftest import poll, task_runs
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import get_current_settings
from prefect.states import Cancelling, StateType

from meadow_core import LocalHost, deterministic_job_id, get_job_sync

SERVED = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    from meadow_core import LocalHost
    from meadow_prefect import MeadowTaskRunner
    from prefect import flow, task

    MARKER = os.environ["MEADOW_TEST_SLEEP_MARKER"]


    @task
    def sleeper(started: str, marker: str) -> None:
        import subprocess

        Path(started).write_text(str(os.getpid()))
        # A child whose cmdline carries the unique marker, so the test can tell that the
        # remote side is really gone (the worker and anything it started).
        subprocess.run([sys.executable, "-c", "import time; time.sleep(60)", marker])


    @flow(
        name="meadow-cancel",
        task_runner=MeadowTaskRunner(host=LocalHost(home=os.environ["MEADOW_HOME"])),
    )
    def meadow_cancel(started: str) -> None:
        sleeper.submit(started, MARKER).result()


    if __name__ == "__main__":
        meadow_cancel.serve(name=os.environ["MEADOW_TEST_DEPLOYMENT"], limit=1)
    """
)


def _remote_sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_cancelling_the_flow_run_cancels_meadow_jobs(
    host: LocalHost, client: SyncPrefectClient, tmp_path: Path
) -> None:
    marker = f"meadow-prefect-cancel-{uuid.uuid4().hex}"
    deployment = f"cancel-{uuid.uuid4().hex[:8]}"
    started = tmp_path / "started"
    script = tmp_path / "served_flow.py"
    script.write_text(SERVED)
    host.start_agent()  # the session's agent serves the flow process too (same home)
    env = {
        **os.environ,
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "MEADOW_HOME": str(host.place.home),
        "MEADOW_TEST_SLEEP_MARKER": marker,
        "MEADOW_TEST_DEPLOYMENT": deployment,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    server = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        served = poll(lambda: _deployment_id(client, f"meadow-cancel/{deployment}"), timeout=30)
        assert served, _output(log_path)
        flow_run = client.create_flow_run_from_deployment(
            served, parameters={"started": str(started)}
        )
        assert poll(started.exists, timeout=30), _output(log_path)
        assert poll(lambda: _remote_sleepers(marker), timeout=10)
        [run] = task_runs(client, flow_run.id, 1, final=False)
        job_id = deterministic_job_id("prefect", run.id, 1)
        assert get_job_sync(job_id, host).state == "running"

        cancelled_at = time.monotonic()
        client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

        def job_cancelled() -> bool:
            return get_job_sync(job_id, host).state == "cancelled"

        assert poll(job_cancelled, timeout=20), _output(log_path)
        assert poll(lambda: not _remote_sleepers(marker), timeout=10)
        # With the runner's control channel the engine knows the SIGTERM is a cancel:
        # the run ends CANCELLED, not CRASHED.
        final = poll(
            lambda: (s := client.read_flow_run(flow_run.id).state) and s.is_final() and s,
            timeout=20,
        )
        assert final and final.type == StateType.CANCELLED, (final, _output(log_path))
        assert time.monotonic() - cancelled_at < 20
    finally:
        _stop(server)
        log.close()
    assert not _remote_sleepers(marker)


def _deployment_id(client: SyncPrefectClient, name: str) -> uuid.UUID | None:
    try:
        return client.read_deployment_by_name(name).id
    except Exception:
        return None


def _output(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-4000:]


def _stop(server: subprocess.Popen[bytes]) -> None:
    """End the serve process and every process it started, even if the test failed."""
    try:
        family = [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)]
    except psutil.NoSuchProcess:
        family = []
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    server.wait(timeout=5)
