"""AllocEC2Instance checks that need moto but no VM: what the API does before a launch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

import meadow_core as mc
from meadow_core import api
from meadow_core.clouds.aws import names, session
from meadow_core.clouds.aws.host import AllocEC2Instance
from tests.aws import ec2_tasks

pytestmark = [pytest.mark.devcloud]

REGION = "us-east-2"


def _no_instances() -> bool:
    reservations = boto3.client("ec2", region_name=REGION).describe_instances()["Reservations"]
    return not [i for r in reservations for i in r["Instances"]]


def test_the_default_deployment_mirrors_code_and_packages(aws_env: dict[str, str]) -> None:
    """Nothing of the caller's machine exists on an instance, so `Deployment()` means
    Meadowrun's mirror_local(): the code on sys.path as a snapshot, the packages rebuilt."""
    prepared = api.portal.call(
        api._prepare(AllocEC2Instance(region_name=REGION), None, None, None, None)
    )
    assert prepared.deployment.code is not None
    assert prepared.deployment.environment is not None
    assert prepared.deployment.environment.kind in ("requirements", "uv_project")
    assert _no_instances()


def test_subnet_and_security_group_from_different_vpcs_fail_before_any_launch(
    aws_env: dict[str, str],
) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.43.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.43.1.0/24")["Subnet"]["SubnetId"]
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    group = ec2.create_security_group(
        GroupName="elsewhere", Description="x", VpcId=default_vpc[0]["VpcId"]
    )["GroupId"]
    host = AllocEC2Instance(region_name=REGION, subnet_id=subnet, security_group_ids=[group])
    with pytest.raises(session.NetworkConfigurationError, match=subnet):
        mc.run_function_sync(
            ec2_tasks.instance_id,
            host=host,
            resources=mc.Resources(logical_cpu=1, memory_gb=1),
            deployment=mc.Deployment(),
        )
    assert _no_instances()


def test_missing_credentials_fail_before_anything(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(session.MissingCredentialsError, match="AWS_ACCESS_KEY_ID"):
        mc.run_function_sync(
            ec2_tasks.instance_id,
            host=AllocEC2Instance(region_name=REGION),
            resources=mc.Resources(logical_cpu=1, memory_gb=1),
        )


def test_a_capacity_error_launches_the_next_choice(aws_env: dict[str, str]) -> None:
    """moto never runs out of capacity, so the error is injected at the client boundary
    (botocore's own event hook); the launch must go on with another instance type."""
    from meadow_core.clouds.aws import admin

    admin.install(REGION, publish_bundle=False)
    refused: list[str] = []

    def no_capacity(params: dict[str, object], **_: object) -> None:
        if not refused:
            refused.append(str(params["InstanceType"]))
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "InsufficientInstanceCapacity", "Message": "none left"}},
                "RunInstances",
            )

    ec2 = session.client("ec2", REGION)
    ec2.meta.events.register("before-parameter-build.ec2.RunInstances", no_capacity)
    try:
        handle = mc.run_function_sync(
            ec2_tasks.instance_id,
            host=AllocEC2Instance(region_name=REGION),
            resources=mc.Resources(logical_cpu=2, memory_gb=4, max_eviction_rate=0),
            deployment=mc.Deployment(),
            wait_for_result=False,
        )
        reservations = ec2.describe_instances()["Reservations"]
        launched = [i["InstanceType"] for r in reservations for i in r["Instances"]]
        assert refused and launched and refused[0] not in launched
        handle.cancel_sync()
    finally:
        ec2.meta.events.unregister("before-parameter-build.ec2.RunInstances", no_capacity)
        ids = [
            i["InstanceId"]
            for r in ec2.describe_instances()["Reservations"]
            for i in r["Instances"]
        ]
        if ids:
            ec2.terminate_instances(InstanceIds=ids)


def test_user_data_holds_no_credential_of_the_callers(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """User data can be read back by anyone who may describe the instance: it names the
    bundle (bucket, key, region, sha256) and the instance fetches it with its own role."""
    from meadow_core.clouds.aws import admin
    from meadow_core.fleet import bootstrap

    key_id, secret = "AKIAMEADOWTEST123456", "meadow/caller+secret/of-the-test"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    session.reset()
    admin.install(REGION)
    host = AllocEC2Instance(region_name=REGION)
    script = host._boot_script()
    for leak in (key_id, secret, "AKIA", "X-Amz-Credential", "X-Amz-Signature"):
        assert leak not in script
    key, bundle = bootstrap.build_bundle(names.AGENT_EXTRAS)
    assert f"data = fetch({host.store.bucket!r}, {key!r}, {REGION!r})" in script
    assert repr(hashlib.sha256(bundle.read_bytes()).hexdigest()) in script
