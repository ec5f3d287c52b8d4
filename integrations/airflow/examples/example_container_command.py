"""One image, many entry points: commands in a container image, run on Meadow.

EXAMPLE ONLY, not a test: ``Deployment.container_image`` belongs to Meadow's deployment
issue and raises ``NotImplementedError`` in today's core, so importing this DAG fails
until that lands. The pattern is the one ``DockerOperator`` users know: a single image
holds the tools, each task runs a different command in it (``command`` is templated),
and each task's last output line goes to XCom.
"""

from __future__ import annotations

from airflow.sdk import dag
from meadow_airflow import MeadowOperator

from meadow_core import Deployment, LocalHost, Resources

IMAGE = Deployment.container_image("ghcr.io/example/etl-tools", "2026.11")


@dag(dag_id="meadow_example_container_command", schedule="@daily", tags=["meadow", "example"])
def meadow_example_container_command() -> None:
    extract = MeadowOperator(
        task_id="extract",
        command="etl extract --date {{ ds }} --out s3://bucket/raw/{{ ds }}/",
        host=LocalHost(),
        deployment=IMAGE,
    )
    transform = MeadowOperator(
        task_id="transform",
        command=["etl", "transform", "--input", "s3://bucket/raw/{{ ds }}/"],
        host=LocalHost(),
        resources=Resources(logical_cpu=8, memory_gb=32),
        deployment=IMAGE,
        environment_variables={"ETL_RUN_ID": "{{ run_id }}"},
    )
    extract >> transform


DAG = meadow_example_container_command()
