"""``meadow_executor`` with ``host: {ec2: ...}``: every step on an EC2 instance of the
dev cloud (moto plus simulated VMs), outputs through Meadow's bucket."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster_jobs as jobs
import pytest
from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable
from meadow_devcloud.ec2 import DevCloud
from meadow_devcloud.ec2.installed import credentials, installed_devcloud

from meadow_core import get_job_sync
from meadow_core.clouds.aws.host import AllocEC2Instance
from tests.devcloud_guard import require_vm_host

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.devcloud,
    pytest.mark.needs_root,
    pytest.mark.slow,
]
REGION = jobs.EC2_REGION


@pytest.fixture(scope="module")
def devcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCloud]:
    """The dev cloud with Meadow installed, reachable only through the credentials in
    the run's config: nothing in the environment points boto3 at it."""
    require_vm_host()
    state_dir = Path(tmp_path_factory.mktemp("devcloud"))
    with installed_devcloud(
        state_dir, REGION, via_environment=False, shared_paths=(sys.prefix,)
    ) as cloud:
        yield cloud


def test_a_job_runs_every_step_on_ec2(
    devcloud: DevCloud, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not [name for name in os.environ if name.startswith(("AWS_ACCESS", "AWS_ENDPOINT"))]
    known = credentials(devcloud, REGION)
    assert known.access_key_id and known.secret_access_key and known.endpoint_url
    # The executor reads its secret from the environment ({env: ...}), as in production.
    monkeypatch.setenv("DEVCLOUD_SECRET_KEY", known.secret_access_key)
    secrets = {
        "access_key_id": known.access_key_id,
        "secret_access_key": {"env": "DEVCLOUD_SECRET_KEY"},
        "endpoint_url": known.endpoint_url,
        "region_name": REGION,
    }
    run_config = {
        "execution": {
            "config": {
                "host": {"ec2": {"region_name": REGION, "idle_timeout": 60}},
                "logical_cpu": 1,
                "memory_gb": 1,
                "credentials": secrets,
            }
        },
        "resources": {
            "io_manager": {
                "config": {
                    # Run config replaces the resource's own settings: name the host again.
                    "host": {"ec2": {"region_name": REGION}},
                    "credentials": {
                        **secrets,
                        "secret_access_key": known.secret_access_key,
                    },
                }
            }
        },
    }
    with execute_job(
        reconstructable(jobs.ec2_pipeline_job), instance=instance, run_config=run_config
    ) as result:
        assert result.success
        # Read here, in the orchestrating process, from the bucket.
        assert result.output_for_node("total") == 12
        run_id = result.run_id
    logs = list(instance.all_logs(run_id))
    starting = [e for e in logs if e.dagster_event_type == DagsterEventType.STEP_WORKER_STARTING]
    host = AllocEC2Instance(region_name=REGION)
    for entry in starting:
        assert entry.dagster_event is not None
        job_id = entry.dagster_event.event_specific_data.metadata["meadow_job_id"].value  # type: ignore[union-attr]
        with host.credentials(known):
            assert get_job_sync(job_id, host).state == "succeeded"
    assert len(starting) == 3
    assert devcloud.vms(), "the steps ran on a simulated instance"
    messages = [e.user_message for e in logs if e.dagster_event is None]
    assert any(m.startswith("making numbers in pid") for m in messages)
