"""Scale: a 1,000-input ``.map``. Alone in the last module, because the harness server
then spends a while recording 1,000 task runs from their events and other tests'
API calls would queue behind it.
"""

from __future__ import annotations

import time

from meadow_prefect import MeadowTaskRunner
from prefect import flow, task
from prefect.client.orchestration import SyncPrefectClient

from meadow_core import LocalHost, list_jobs_sync


def test_map_of_1000_inputs_is_one_meadow_job(host: LocalHost, client: SyncPrefectClient) -> None:
    @task
    def triple(x: int) -> int:
        return 3 * x

    @flow(task_runner=MeadowTaskRunner(host=host))
    def big_map() -> list[int]:
        return triple.map(range(1000)).result()

    before = {job.job_id for job in list_jobs_sync(host, limit=500)}
    started = time.monotonic()
    state = big_map(return_state=True)
    elapsed = time.monotonic() - started
    assert state.result() == [3 * x for x in range(1000)]
    new_jobs = [job for job in list_jobs_sync(host, limit=500) if job.job_id not in before]
    # Batched: every element went through a Meadow map. Usually one job; a wave is sent
    # early only when the engine's calls arrive far apart (a loaded machine).
    assert {(job.kind, job.state) for job in new_jobs} == {("map", "succeeded")}
    assert sum(job.num_tasks for job in new_jobs) == 1000
    assert len(new_jobs) <= 3, [job.num_tasks for job in new_jobs]
    assert elapsed < 90, f"a 1,000-input map took {elapsed:.1f} s"
    flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.state is not None and flow_run.state.is_completed()
