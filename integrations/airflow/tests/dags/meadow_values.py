"""A value XCom cannot hold stays in Meadow; a Meadow task downstream gets the value."""

from __future__ import annotations

import threading
from typing import Any

from airflow.sdk import dag, task
from meadow_airflow import MeadowOperator


class Point:
    """A plain class: Airflow's serde refuses it, so it cannot go to XCom."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y


def make_point() -> Point:
    return Point(3, 4)


def make_lock() -> Any:
    return threading.Lock()


@dag(dag_id="meadow_values", schedule=None)
def meadow_values() -> None:
    point = MeadowOperator(task_id="make_point", python_callable=make_point)

    @task.meadow
    def norm2(p: Point) -> int:
        print(f"got a {type(p).__name__} with x={p.x}")
        return p.x * p.x + p.y * p.y

    @task
    def plain_sees(value: Any) -> str:
        return value["message"]

    norm2(point.output)
    plain_sees(point.output)
    MeadowOperator(task_id="make_lock", python_callable=make_lock)


DAG = meadow_values()
