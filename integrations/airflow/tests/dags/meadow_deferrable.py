"""Deferrable mode: the trigger waits for the job; execute_complete reads value and log."""

from __future__ import annotations

import time

from airflow.sdk import dag, task
from meadow_airflow import MeadowOperator


def slow_square(x: int) -> int:
    print(f"squaring {x} after a nap")
    time.sleep(1.0)
    return x * x


@dag(dag_id="meadow_deferrable", schedule=None)
def meadow_deferrable() -> None:
    classic = MeadowOperator(
        task_id="classic", python_callable=slow_square, op_args=[7], deferrable=True
    )

    @task.meadow(deferrable=True)
    def fails() -> None:
        raise KeyError("missing while deferred")

    @task
    def plain(value: int) -> int:
        return value + 1

    plain(classic.output)
    fails()


DAG = meadow_deferrable()
