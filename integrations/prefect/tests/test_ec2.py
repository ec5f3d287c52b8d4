"""``MeadowTaskRunner(host=AllocEC2Instance(...))``: a flow's tasks on EC2 instances of
the dev cloud (moto plus simulated VMs), with Prefect's engine, states and logs here."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import ec2_work
import meadow_prefect
import pytest
from conftest import logs_of, task_runs
from meadow_devcloud.ec2 import DevCloud
from meadow_devcloud.ec2.installed import credentials, installed_devcloud
from meadow_prefect import MeadowTaskRunner
from prefect import flow, task
from prefect.client.orchestration import SyncPrefectClient

from meadow_core import Deployment, PipRequirementsFile, Resources
from meadow_core.clouds.aws.host import AllocEC2Instance
from tests.devcloud_guard import require_vm_host

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.devcloud,
    pytest.mark.needs_root,
    pytest.mark.slow,
]
REGION = "us-east-2"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def devcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCloud]:
    """The dev cloud with Meadow installed, reachable only through credentials handed
    to the runner: nothing in the environment points boto3 at it."""
    require_vm_host()
    state_dir = Path(tmp_path_factory.mktemp("devcloud"))
    with installed_devcloud(
        state_dir, REGION, via_environment=False, shared_paths=(sys.prefix,)
    ) as cloud:
        yield cloud


@dataclasses.dataclass
class _ClientParameters:
    endpoint_url: str


@dataclasses.dataclass
class CredentialsBlock:
    """The shape of prefect-aws's ``AwsCredentials`` block (not installed here): a
    boto3 session and the client parameters, the endpoint among them."""

    access_key_id: str
    secret_access_key: str
    region_name: str
    aws_client_parameters: _ClientParameters

    def get_boto3_session(self) -> boto3.Session:
        return boto3.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region_name,
        )


#: The function body runs on the instance; Prefect's engine stays here.
square_where = task(ec2_work.square_where)


def _deployment(tmp_path: Path) -> Deployment:
    """This module's helpers and ``meadow_prefect`` as code, six as the environment.

    Not ``Deployment()``: that would mirror the whole test venv, whose Prefect pin is
    installed with an override (``scripts/test.sh``) and so, rightly, does not resolve.
    """
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    adapter = Path(meadow_prefect.__file__).resolve().parent.parent
    return asyncio.run(
        Deployment.mirror_local(
            interpreter=PipRequirementsFile(str(requirements)),
            additional_sys_paths=[str(HERE), str(adapter)],
            include_sys_path=False,
        )
    )


def test_a_flow_maps_its_tasks_onto_ec2_with_a_credentials_block(
    devcloud: DevCloud, client: SyncPrefectClient, tmp_path: Path
) -> None:
    assert not [name for name in os.environ if name.startswith(("AWS_ACCESS", "AWS_ENDPOINT"))]
    known = credentials(devcloud, REGION)
    assert known.access_key_id and known.secret_access_key and known.endpoint_url
    block = CredentialsBlock(
        known.access_key_id,
        known.secret_access_key,
        REGION,
        _ClientParameters(known.endpoint_url),
    )
    runner = MeadowTaskRunner(
        host=AllocEC2Instance(region_name=REGION, idle_timeout=60),
        resources=Resources(logical_cpu=1, memory_gb=1, max_eviction_rate=0),
        deployment=_deployment(tmp_path),
        credentials=block,
    )

    @flow(task_runner=runner)
    def squares() -> list[tuple[int, str]]:
        return [f.result() for f in square_where.map(range(4))]

    state = squares(return_state=True)
    results = state.result()
    assert sorted(value for value, _ in results) == [0, 1, 4, 9]
    instances = {where for _, where in results}
    assert instances <= set(devcloud.vms()) and instances, results
    # Prefect's own record: four completed task runs, each with its remote print.
    runs = task_runs(client, state.state_details.flow_run_id, 4)
    assert all(run.state is not None and run.state.is_completed() for run in runs)
    for run in runs:
        assert logs_of(client, run.id, "on an instance"), run.name
