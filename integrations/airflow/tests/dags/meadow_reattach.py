"""Tasks whose Airflow side is lost while the Meadow job runs on.

``slow`` is used by a test that SIGKILLs the whole Airflow process and starts again.
``lost_worker`` loses its first try right after launching (as a worker whose machine
vanished would); its retry must reattach to the running job, not launch a second one.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Context, dag
from meadow_airflow import MeadowOperator

MARKERS = os.environ.get("MEADOW_AIRFLOW_TEST_MARKERS", "/tmp")


def counted_slow_job(marker: str, seconds: float) -> str:
    with Path(marker).open("a") as f:
        f.write(f"{os.getpid()}\n")
    print("remote job started")
    time.sleep(seconds)
    print("remote job finished")
    return "finished"


class WorkerLostOnFirstTry(MeadowOperator):
    """Try 1 launches the job, then dies without cancelling it (no on_kill, no wait)."""

    def execute(self, context: Context) -> Any:
        if context["ti"].try_number == 1:
            job_id = self.launch(context)
            raise RuntimeError(f"simulated loss of the Airflow worker after launching {job_id}")
        return super().execute(context)


@dag(dag_id="meadow_reattach", schedule=None)
def meadow_reattach() -> None:
    MeadowOperator(
        task_id="slow",
        python_callable=counted_slow_job,
        op_args=[f"{MARKERS}/slow_runs", 4],
    )
    WorkerLostOnFirstTry(
        task_id="lost_worker",
        python_callable=counted_slow_job,
        op_args=[f"{MARKERS}/lost_worker_runs", 3],
        retries=1,
        retry_delay=timedelta(0),
    )


DAG = meadow_reattach()
