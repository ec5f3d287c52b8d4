"""Classic operator (templated), @task.meadow, a command, and plain tasks reading XCom."""

from __future__ import annotations

import os
import sys

from airflow.sdk import dag, task
from meadow_airflow import MeadowOperator

from meadow_core import LocalHost, Resources


def add(a: int, b: str) -> int:
    print(f"adding {a} and {b} on pid {os.getpid()}")
    return a + int(b)


@dag(dag_id="meadow_basic", schedule=None, params={"b": 3})
def meadow_basic() -> None:
    classic = MeadowOperator(
        task_id="classic",
        python_callable=add,
        op_args=[2, "{{ params.b }}"],
        host=LocalHost(),
        resources=Resources(logical_cpu=1),
    )

    @task.meadow(resources=Resources(logical_cpu=1, memory_gb=1))
    def double(x: int) -> dict[str, int]:
        print(f"doubling {x} in the remote worker")
        return {"doubled": 2 * x}

    @task
    def plain(value: dict[str, int], line: str) -> str:
        return f"{value['doubled']}|{line}"

    command = MeadowOperator(
        task_id="command",
        command=[sys.executable, "-c", "print('hello from {{ dag.dag_id }}'); print('last line')"],
    )

    plain(double(classic.output), command.output)


DAG = meadow_basic()
