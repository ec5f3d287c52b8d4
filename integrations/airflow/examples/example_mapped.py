"""Mapped tasks on Meadow: one Meadow job per map index, summed by a plain task.

Runs today on ``LocalHost`` (this machine). Put this file in your DAGS_FOLDER, or run it
directly (``python example_mapped.py``) to execute it once with ``dag.test()``. Swap
``LocalHost()`` for ``AllocEC2Instance()`` once the AWS host lands; nothing else changes.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from meadow_airflow import MeadowOperator

from meadow_core import LocalHost, Resources

HOST = LocalHost()


def score(shard: int) -> float:
    """A stand-in for a heavy step: some CPU work on one shard."""
    return sum(i * i for i in range(shard * 100_000)) / 1e12


@dag(dag_id="meadow_example_mapped", schedule=None, tags=["meadow", "example"])
def meadow_example_mapped() -> None:
    @task
    def shards() -> list[int]:
        return [1, 2, 3, 4, 5, 6]

    @task.meadow(host=HOST, resources=Resources(logical_cpu=1, memory_gb=0.5))
    def heavy(shard: int) -> float:
        print(f"scoring shard {shard}")  # appears in this map index's task log
        return score(shard)

    @task
    def report(values: list[float]) -> float:
        return sum(values)

    report(heavy.expand(shard=shards()))

    # The classic operator maps the same way (over op_args or op_kwargs).
    MeadowOperator.partial(
        task_id="classic_mapped", python_callable=score, host=HOST, deferrable=True
    ).expand(op_args=[[7], [8]])


DAG = meadow_example_mapped()

if __name__ == "__main__":
    DAG.test()
