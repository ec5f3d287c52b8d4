"""MeadowOperator on EC2 end to end: the dev cloud (moto plus simulated VMs) as the
account, and the credentials only in an Airflow connection, never in the environment."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import load_dag, run_dag
from meadow_devcloud.ec2 import DevCloud
from meadow_devcloud.ec2.installed import credentials, installed_devcloud

from tests.devcloud_guard import require_vm_host

REGION = "us-east-2"
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.devcloud,
    pytest.mark.needs_root,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def devcloud_connection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCloud]:
    """A dev cloud with Meadow installed, reachable only through ``meadow_devcloud``."""
    require_vm_host()
    state_dir = Path(tmp_path_factory.mktemp("devcloud"))
    with installed_devcloud(
        state_dir, REGION, via_environment=False, shared_paths=(sys.prefix,)
    ) as cloud:
        known = credentials(cloud, REGION)
        connection = {
            "conn_type": "aws",
            "login": known.access_key_id,
            "password": known.secret_access_key,
            "extra": {"region_name": REGION, "endpoint_url": known.endpoint_url},
        }
        os.environ["AIRFLOW_CONN_MEADOW_DEVCLOUD"] = json.dumps(connection)
        os.environ["AIRFLOW_CONN_MEADOW_ROLE"] = json.dumps(
            {**connection, "extra": {"role_arn": "arn:aws:iam::123456789012:role/x"}}
        )
        yield cloud


def test_operator_runs_on_ec2_with_credentials_from_a_connection(
    devcloud_connection: DevCloud,
) -> None:
    assert not [name for name in os.environ if name.startswith("AWS_ACCESS")]
    run = run_dag(load_dag("meadow_aws"))

    # Waiting on the worker, then deferred to the trigger: both on the same (warm)
    # instance, the remote print in each task's own log, the instance id in XCom.
    for task_id in ("waits_on_ec2", "deferred_on_ec2"):
        assert run.states[(task_id, -1)] == "success", run.task_log(task_id)
        instance = run.xcom[(task_id, -1)]
        assert instance.startswith("i-") and instance in devcloud_connection.vms()
        assert f"running on instance {instance}" in run.task_log(task_id)
    assert run.xcom[("waits_on_ec2", -1)] == run.xcom[("deferred_on_ec2", -1)]

    # A result XCom cannot hold stays in the bucket; a plain task with no credentials of
    # its own reads it through the connection the reference names.
    assert run.xcom[("reading_on_ec2", -1)]["aws_conn_id"] == "meadow_devcloud"
    assert run.xcom[("plain_resolves", -1)] == 21.5, run.task_log("plain_resolves")

    # No connection, and nothing in the environment: refused before anything launches.
    assert run.states[("no_credentials", -1)] == "failed"
    assert "no AWS credentials found" in run.task_log("no_credentials")
    # A connection that wants a role assumed says Meadow cannot do that yet.
    assert run.states[("assumes_a_role", -1)] == "failed"
    assert "aws_conn_id='meadow_role' asks for assuming a role" in run.task_log("assumes_a_role")
