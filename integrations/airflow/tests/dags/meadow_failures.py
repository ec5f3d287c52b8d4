"""A remote exception, and bad inputs that must fail their task naming the argument."""

from __future__ import annotations

import time
from datetime import timedelta

from airflow.sdk import dag
from meadow_airflow import MeadowOperator

from meadow_core import Resources


def inner_step(n: int) -> int:
    raise ValueError(f"remote boom with n={n}")


def remote_fails(n: int) -> int:
    print("about to fail")
    return inner_step(n)


def sleeps(seconds: float) -> None:
    print("sleeping remotely")
    time.sleep(seconds)


def fine() -> str:
    return "fine"


@dag(dag_id="meadow_failures", schedule=None)
def meadow_failures() -> None:
    MeadowOperator(task_id="remote_exception", python_callable=remote_fails, op_args=[5])
    MeadowOperator(task_id="bad_host", python_callable=fine, host="localhost")  # type: ignore[arg-type]
    MeadowOperator(
        task_id="bad_resources",
        python_callable=fine,
        resources={"logical_cpu": 1},  # type: ignore[arg-type]
    )
    MeadowOperator(
        task_id="impossible_resources",
        python_callable=fine,
        resources=Resources(logical_cpu=4096),
    )
    MeadowOperator(task_id="unknown_conn", python_callable=fine, aws_conn_id="no_such_conn")
    MeadowOperator(
        task_id="times_out",
        python_callable=sleeps,
        op_args=[120],
        execution_timeout=timedelta(seconds=3),
    )
    MeadowOperator(task_id="known_conn", python_callable=fine, aws_conn_id="meadow_test_aws")


DAG = meadow_failures()
