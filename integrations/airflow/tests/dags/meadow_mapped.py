"""Dynamic task mapping: @task.meadow.expand and MeadowOperator.partial().expand."""

from __future__ import annotations

from airflow.sdk import dag, task
from meadow_airflow import MeadowOperator

from meadow_core import Resources


def cube(x: int) -> int:
    print(f"cubing {x}")
    return x**3


@dag(dag_id="meadow_mapped", schedule=None)
def meadow_mapped() -> None:
    @task.meadow(resources=Resources(logical_cpu=0.5))
    def square(x: int) -> int:
        print(f"squaring {x}")
        return x * x

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    total(square.expand(x=[1, 2, 3, 4]))
    cubes = MeadowOperator.partial(
        task_id="cube", python_callable=cube, resources=Resources(logical_cpu=0.5)
    ).expand(op_args=[[1], [2], [3]])
    total.override(task_id="total_cubes")(cubes.output)


DAG = meadow_mapped()
