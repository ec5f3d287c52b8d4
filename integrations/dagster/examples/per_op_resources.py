"""A job whose ops ask Meadow for different resources, with executor-level defaults.

dagster job execute -f integrations/dagster/examples/per_op_resources.py -j train
"""

import json

from dagster import RetryPolicy, job, op
from meadow_dagster import RESOURCES_TAG, meadow_executor, meadow_io_manager


@op
def load() -> list[float]:
    return [float(i) for i in range(1000)]


@op(
    tags={RESOURCES_TAG: json.dumps({"logical_cpu": 2, "memory_gb": 2})},
    retry_policy=RetryPolicy(max_retries=2),
)
def fit(data: list[float]) -> float:
    """Asks for 2 CPUs and 2 GB; retried on Meadow if it fails or its machine dies."""
    return sum(data) / len(data)


@op
def publish(mean: float) -> str:
    return f"mean = {mean}"


@job(
    executor_def=meadow_executor.configured(
        {"logical_cpu": 1, "timeout_seconds": 600, "max_concurrent": 8}
    ),
    resource_defs={"io_manager": meadow_io_manager},
)
def train() -> None:
    publish(fit(load()))
