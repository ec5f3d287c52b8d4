"""A ``.map`` over 1,000 inputs: 1,000 Prefect task runs, one Meadow map job.

Each element keeps its own Prefect state, retries and cache entry; their function calls
travel to the host together (one payload) instead of 1,000 separate jobs.

    .venvs/prefect/bin/python integrations/prefect/examples/map_flow.py
"""

from __future__ import annotations

import time

from meadow_prefect import MeadowTaskRunner
from prefect import flow, task

from meadow_core import LocalHost, list_jobs_sync


@task
def score(x: int) -> int:
    return (x * x) % 97


def main() -> None:
    host = LocalHost()

    @flow(task_runner=MeadowTaskRunner(host=host))
    def scoring(n: int = 1000) -> int:
        return sum(score.map(range(n)).result())

    try:
        started = time.perf_counter()
        total = scoring()
        print(f"total {total} in {time.perf_counter() - started:.1f} s")
        latest = list_jobs_sync(host, limit=1)[0]
        print(f"Meadow job {latest.job_id}: {latest.kind} of {latest.num_tasks} tasks")
    finally:
        host.shutdown()


if __name__ == "__main__":
    main()
