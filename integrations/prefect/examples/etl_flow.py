"""An ETL flow whose heavy transform step gets a bigger machine.

Extract and load are light and use the runner's defaults; the transform asks for more
CPU and memory through ``meadow_options`` (a task tag such as ``meadow:memory_gb=8``
works too). On ``LocalHost`` "bigger" means a larger reservation on this machine; on a
cloud host it picks a larger instance type.

    .venvs/prefect/bin/python integrations/prefect/examples/etl_flow.py
"""

from __future__ import annotations

import statistics

from meadow_prefect import MeadowTaskRunner, meadow_options
from prefect import flow, task

from meadow_core import LocalHost, Resources


@task
def extract(n: int) -> list[float]:
    return [float((i * 7919) % 1000) for i in range(n)]


@task(retries=2, retry_delay_seconds=1)
def transform(values: list[float]) -> dict[str, float]:
    print(f"transforming {len(values)} values")  # shows in this task run's logs
    return {"mean": statistics.fmean(values), "stdev": statistics.pstdev(values)}


@task
def load(summary: dict[str, float]) -> str:
    return ", ".join(f"{key}={value:.2f}" for key, value in sorted(summary.items()))


def main() -> None:
    host = LocalHost()
    runner = MeadowTaskRunner(host=host, resources=Resources(logical_cpu=1))

    @flow(task_runner=runner, log_prints=True)
    def etl(n: int = 100_000) -> str:
        raw = extract.submit(n)
        with meadow_options(resources=Resources(logical_cpu=2, memory_gb=2)):
            summary = transform.submit(raw)
        return load.submit(summary).result()

    try:
        print(etl())
    finally:
        host.shutdown()


if __name__ == "__main__":
    main()
