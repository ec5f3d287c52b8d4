"""MeadowOperator on EC2 (the dev cloud), with AWS credentials only in a connection."""

from __future__ import annotations

import urllib.request
from typing import Any

from airflow.sdk import dag, task
from meadow_airflow import MeadowOperator, resolve_meadow_results

from meadow_core import MEADOW_INTERPRETER, Deployment, Resources
from meadow_core.aws.host import AllocEC2Instance

REGION = "us-east-2"
SMALL = Resources(logical_cpu=1, memory_gb=1, max_eviction_rate=0)
#: The agent's own Python on the instance; the function travels pickled by value.
ON_THE_AGENT = Deployment.preinstalled_interpreter(MEADOW_INTERPRETER)


def instance_id() -> str:
    """The id of the instance this runs on, from its metadata endpoint (IMDSv2)."""
    token = urllib.request.urlopen(
        urllib.request.Request(
            "http://169.254.169.254/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        ),
        timeout=2,
    ).read()
    found = urllib.request.urlopen(
        urllib.request.Request(
            "http://169.254.169.254/latest/meta-data/instance-id",
            headers={"X-aws-ec2-metadata-token": token.decode()},
        ),
        timeout=2,
    ).read()
    print(f"running on instance {found.decode()}")
    return found.decode()


class Point:
    """A plain class: Airflow's serde refuses it, so the result stays in the bucket."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y


def make_point() -> Point:
    return Point(3, 4)


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
    point = MeadowOperator(
        task_id="point_on_ec2",
        python_callable=make_point,
        host=AllocEC2Instance(idle_timeout=30),
        aws_conn_id="meadow_devcloud",
        resources=SMALL,
        deployment=ON_THE_AGENT,
    )
    deferred >> point

    @task
    def plain_resolves(value: Any) -> int:
        """No connection here: the reference names the one the job ran under."""
        p = resolve_meadow_results(value)
        return int(p.x * p.x + p.y * p.y)

    plain_resolves(point.output)
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
