"""MeadowOperator on EC2 (the dev cloud), with AWS credentials only in a connection."""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task
from meadow_airflow import MeadowOperator, resolve_meadow_results

from meadow_core import MEADOW_INTERPRETER, Deployment, Resources
from meadow_core.clouds.aws import metadata
from meadow_core.clouds.aws.host import AllocEC2Instance

REGION = "us-east-2"
SMALL = Resources(logical_cpu=1, memory_gb=1, max_eviction_rate=0)
#: The agent's own Python on the instance; the function travels pickled by value.
ON_THE_AGENT = Deployment.preinstalled_interpreter(MEADOW_INTERPRETER)


def instance_id() -> str:
    """The id of the instance this runs on, said in the task's log too."""
    found = metadata.instance_id() or "not on an instance"
    print(f"running on instance {found}")
    return found


class Reading:
    """A plain class: Airflow's serde refuses it, so the result stays in the bucket."""

    def __init__(self, celsius: float) -> None:
        self.celsius = celsius


def read_sensor() -> Reading:
    return Reading(21.5)


@dag(dag_id="meadow_aws", schedule=None)
def meadow_aws() -> None:
    waits = MeadowOperator(
        task_id="waits_on_ec2",
        python_callable=instance_id,
        host=AllocEC2Instance(idle_timeout=30),  # the region comes from the connection
        aws_conn_id="meadow_devcloud",
        resources=SMALL,
        deployment=ON_THE_AGENT,
    )
    deferred = MeadowOperator(
        task_id="deferred_on_ec2",
        python_callable=instance_id,
        host=AllocEC2Instance(idle_timeout=30),
        aws_conn_id="meadow_devcloud",
        resources=SMALL,
        deployment=ON_THE_AGENT,
        deferrable=True,
    )
    waits >> deferred
    reading = MeadowOperator(
        task_id="reading_on_ec2",
        python_callable=read_sensor,
        host=AllocEC2Instance(idle_timeout=30),
        aws_conn_id="meadow_devcloud",
        resources=SMALL,
        deployment=ON_THE_AGENT,
    )
    deferred >> reading

    @task
    def plain_resolves(value: Any) -> float:
        """No connection here: the reference names the one the job ran under."""
        return float(resolve_meadow_results(value).celsius)

    plain_resolves(reading.output)
    MeadowOperator(
        task_id="no_credentials",
        python_callable=instance_id,
        host=AllocEC2Instance(region_name=REGION),
        resources=SMALL,
        deployment=ON_THE_AGENT,
    )
    MeadowOperator(
        task_id="assumes_a_role",
        python_callable=instance_id,
        host=AllocEC2Instance(),
        aws_conn_id="meadow_role",
        resources=SMALL,
        deployment=ON_THE_AGENT,
    )


DAG = meadow_aws()
