"""install / uninstall / clean / ls and the pre-launch checks, against moto in server mode."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meadow_core.clouds.aws import admin, names, session
from meadow_core.clouds.aws.cli import aws
from meadow_core.clouds.aws.registry import TERMINATING, DynamoRegistry, InstanceRecord
from meadow_core.clouds.aws.store import S3ObjectStore
from meadow_core.errors import InvalidRequestError
from meadow_core.resources import Resources

pytestmark = [pytest.mark.devcloud]

REGION = "us-east-2"
#: A long dotted id (as orchestrators derive them): its queue names carry a hash.
DONE = "nightly.2026-11-22." + "x" * 90 + ".step-1"


@pytest.fixture
def aws_region(aws_env: dict[str, str]) -> str:
    session.reset()
    return aws_env["AWS_DEFAULT_REGION"]


def _snapshot(region: str) -> dict[str, Any]:
    """Everything install could touch, as plain data to compare."""
    s3 = session.client("s3", region)
    ec2 = session.client("ec2", region)
    iam = session.client("iam", region)
    groups = ec2.describe_security_groups()["SecurityGroups"]
    return {
        "buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"]),
        "tables": sorted(session.client("dynamodb", region).list_tables()["TableNames"]),
        "roles": sorted(r["RoleName"] for r in iam.list_roles()["Roles"]),
        "profiles": sorted(
            p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]
        ),
        "groups": sorted(
            (g["GroupId"], g["GroupName"], g["VpcId"], json.dumps(g["IpPermissions"]))
            for g in groups
        ),
        "queues": sorted(session.client("sqs", region).list_queues().get("QueueUrls", [])),
        "instances": sorted(
            i["InstanceId"]
            for r in ec2.describe_instances()["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        ),
    }


def _ami(region: str) -> str:
    parameter = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    value: str = session.client("ssm", region).get_parameter(Name=parameter)["Parameter"]["Value"]
    return value


def _launch(region: str, tagged: bool = True) -> str:
    tags = [{"ResourceType": "instance", "Tags": names.managed_tags()}] if tagged else []
    instance = session.client("ec2", region).run_instances(
        ImageId=_ami(region),
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=tags,
    )["Instances"][0]
    return str(instance["InstanceId"])


def _state(region: str, instance_id: str) -> str:
    reservations = session.client("ec2", region).describe_instances(InstanceIds=[instance_id])
    return str(reservations["Reservations"][0]["Instances"][0]["State"]["Name"])


def test_install_then_uninstall_leaves_the_account_as_it_was(aws_region: str) -> None:
    before = _snapshot(aws_region)
    report = admin.install(aws_region)
    account = session.account_id()
    bucket = names.bucket_name(account, aws_region)
    assert any("published the agent bundle" in line for line in report.done), report

    s3 = session.client("s3", aws_region)
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    expiring = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules if "Expiration" in r}
    assert expiring == {"results/": admin.DEFAULT_EXPIRY_DAYS, "logs/": admin.DEFAULT_EXPIRY_DAYS}
    assert {"Key": names.MANAGED_TAG_KEY, "Value": "true"} in s3.get_bucket_tagging(Bucket=bucket)[
        "TagSet"
    ]

    iam = session.client("iam", aws_region)
    policy = iam.get_role_policy(RoleName=names.ROLE_NAME, PolicyName=names.ROLE_POLICY_NAME)
    document = policy["PolicyDocument"]
    text = document if isinstance(document, str) else json.dumps(document)
    statements = json.loads(text)["Statement"]
    resources = [
        r
        for s in statements
        for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
    ]
    assert f"arn:aws:s3:::{bucket}/*" in resources
    assert all(r == "*" or account in r or bucket in r for r in resources), resources
    terminate = next(s for s in statements if "ec2:TerminateInstances" in s["Action"])
    # Only Meadow's instances, and each only itself.
    assert terminate["Condition"] == {
        "StringEquals": {
            f"aws:ResourceTag/{names.MANAGED_TAG_KEY}": "true",
            "aws:ARN": "${ec2:SourceInstanceARN}",
        }
    }
    wildcard = [s for s in statements if s["Resource"] == "*"]
    assert all(a.startswith("ec2:Describe") for s in wildcard for a in s["Action"])
    profile = iam.get_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE_NAME)
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == [names.ROLE_NAME]

    groups = session.client("ec2", aws_region).describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [names.SECURITY_GROUP_NAME]}]
    )["SecurityGroups"]
    assert len(groups) == 1 and groups[0]["IpPermissions"] == [], "no inbound rules"

    again = admin.install(aws_region, publish_bundle=False)
    assert again.done == [] and len(again.kept) == 5, "a second install changes nothing"

    # What a user of the account accumulates: an instance, a queue and objects.
    _launch(aws_region)
    session.client("sqs", aws_region).create_queue(QueueName="meadow-job-leftover")
    S3ObjectStore(bucket, s3).put("results/leftover/outcomes/0", b"x")

    admin.uninstall(aws_region)
    after = _snapshot(aws_region)
    assert after == before
    assert admin.uninstall(aws_region).done == [], "uninstalling twice is harmless"


def test_clean_removes_planted_orphans_and_keeps_what_is_owned(aws_region: str) -> None:
    admin.install(aws_region, publish_bundle=False)
    region = aws_region
    registry = DynamoRegistry(session.client("dynamodb", region))
    sqs = session.client("sqs", region)
    store = S3ObjectStore(
        names.bucket_name(session.account_id(), region), session.client("s3", region)
    )
    now = time.time()

    owned = _launch(region)
    orphan = _launch(region)
    stuck = _launch(region)
    silent = _launch(region)
    stranger = _launch(region, tagged=False)
    stale = "i-0123456789abcdef0"
    for instance_id, state, launched in (
        (owned, "running", now),
        (stuck, TERMINATING, now),
        (stale, "running", now - 3600),
        (silent, "running", now - 3600),
    ):
        record = InstanceRecord(instance_id, "t3.micro", False, 0.0104, 2, 1, launched_at=launched)
        record.state = state
        record.last_heartbeat = launched
        if state == TERMINATING:
            record.terminating_since = now - 3600
        assert registry.register(record)
    registry.put_job("job-live", {"state": "running", "created": now})
    registry.put_job(DONE, {"state": "succeeded", "created": now - 7200, "finished": now - 7000})
    queues = [
        names.job_queue_name("job-live"),
        names.result_queue_name("job-live"),
        names.job_queue_name(DONE),
        names.result_queue_name(DONE),
        names.job_queue_name("ghost"),
        names.control_queue_name(owned),
        names.control_queue_name(orphan),
        names.control_queue_name(stale),
    ]
    for name in queues:
        sqs.create_queue(QueueName=name, tags={names.MANAGED_TAG_KEY: "true"})
    for job in ("job-live", DONE):
        store.put(f"results/{job}/outcomes/00000000.0001", b"outcome")
        store.put(f"logs/{job}/00000000.0001.log", b"log")

    # Young things may be half set up by a caller: the default grace keeps them.
    first = admin.clean(region)
    assert sorted(first.terminated_instances) == sorted([stuck, silent]), (
        "stuck terminating for an hour, or its agent silent for an hour"
    )
    assert set(first.removed_registry_entries) == {stuck, stale, silent}
    assert first.deleted_queues == []
    assert _state(region, orphan) == "running"

    second = admin.clean(region, grace_seconds=0, results_retention_seconds=0)
    assert second.terminated_instances == [orphan]
    assert second.removed_registry_entries == []
    assert sorted(second.deleted_queues) == sorted(
        [
            names.job_queue_name(DONE),
            names.result_queue_name(DONE),
            names.job_queue_name("ghost"),
            names.control_queue_name(orphan),
            names.control_queue_name(stale),
        ]
    )
    assert second.cleaned_jobs == [DONE] and second.deleted_objects == 2
    assert len(names.job_queue_name(DONE)) <= 80

    assert {_state(region, i) for i in (orphan, stuck, silent)} <= {"shutting-down", "terminated"}
    assert _state(region, owned) == "running"
    assert _state(region, stranger) == "running", "instances not tagged as Meadow's are not ours"
    assert [r.instance_id for r in registry.list()] == [owned]
    left = sorted(u.rsplit("/", 1)[-1] for u in sqs.list_queues()["QueueUrls"])
    assert left == sorted(
        [
            names.job_queue_name("job-live"),
            names.result_queue_name("job-live"),
            names.control_queue_name(owned),
        ]
    )
    assert store.list_keys("results/") == ["results/job-live/outcomes/00000000.0001"]
    assert store.list_keys("logs/") == ["logs/job-live/00000000.0001.log"]

    third = admin.clean(region, grace_seconds=0, results_retention_seconds=0)
    assert third.empty, third


def test_cli_install_ls_clean_uninstall(aws_region: str) -> None:
    runner = CliRunner()
    result = runner.invoke(
        aws,
        ["install", "--region", aws_region, "--expiry-days", "3", "--no-bundle"],
        catch_exceptions=False,
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0 and "created DynamoDB table meadow-registry" in result.output
    bucket = names.bucket_name(session.account_id(), aws_region)
    rules = session.client("s3", aws_region).get_bucket_lifecycle_configuration(Bucket=bucket)
    assert {r.get("Expiration", {}).get("Days") for r in rules["Rules"]} == {3, None}
    registry = DynamoRegistry(session.client("dynamodb", aws_region))
    instance_id = _launch(aws_region)
    record = InstanceRecord(
        instance_id, "m5.large", True, 0.0312, 2, 8, launched_at=time.time() - 3725
    )
    registry.register(record)
    assert registry.try_allocate(instance_id, "job-7", 2, Resources(logical_cpu=1, memory_gb=2))

    result = runner.invoke(aws, ["ls", "--region", aws_region], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert instance_id in result.output and "job-7 (2)" in result.output
    assert "1:02:0" in result.output and "0.0312" in result.output and "spot" in result.output

    result = runner.invoke(aws, ["clean", "--region", aws_region])
    assert result.exit_code == 0 and "nothing to clean" in result.output

    result = runner.invoke(aws, ["uninstall", "--region", aws_region], input="n\n")
    assert result.exit_code != 0 and _state(aws_region, instance_id) == "running"
    result = runner.invoke(aws, ["uninstall", "--region", aws_region, "--yes"])
    assert result.exit_code == 0, result.output
    assert f"terminated instances {instance_id}" in result.output

    result = runner.invoke(aws, ["ls", "--region", aws_region])
    assert result.exit_code == 1 and "meadow aws install --region" in result.output


def test_unknown_region_names_it_and_how_to_list_regions(aws_region: str) -> None:
    with pytest.raises(session.UnknownRegionError) as raised:
        session.check_region("us-east-7")
    message = str(raised.value)
    assert "'us-east-7'" in message and "describe-regions" in message
    assert "us-east-1" in message, "close matches are suggested"
    assert isinstance(raised.value, InvalidRequestError)
    session.check_region("eu-west-1")
    result = CliRunner().invoke(aws, ["install", "--region", "mars-1"])
    assert result.exit_code == 1 and "unknown AWS region 'mars-1'" in result.output
    assert session.client("s3", REGION).list_buckets()["Buckets"] == [], "nothing was created"


def test_subnet_and_security_group_from_different_vpcs(aws_region: str) -> None:
    ec2 = session.client("ec2", aws_region)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0][
        "VpcId"
    ]
    in_default = ec2.create_security_group(
        GroupName="elsewhere", Description="x", VpcId=default_vpc
    )["GroupId"]
    in_vpc = ec2.create_security_group(GroupName="here", Description="x", VpcId=vpc)["GroupId"]

    assert session.check_network(subnet, [in_vpc], aws_region) == vpc
    assert session.check_network(None, [in_default], aws_region) == default_vpc
    with pytest.raises(session.NetworkConfigurationError) as raised:
        session.check_network(subnet, [in_vpc, in_default], aws_region)
    message = str(raised.value)
    assert in_default in message and default_vpc in message and vpc in message
    assert subnet in message
    with pytest.raises(session.NetworkConfigurationError, match=f"default VPC {default_vpc}"):
        session.check_network(None, [in_vpc], aws_region)
    with pytest.raises(session.NetworkConfigurationError, match="subnet 'subnet-0000000f'"):
        session.check_network("subnet-0000000f", [in_vpc], aws_region)
    with pytest.raises(session.NetworkConfigurationError, match="sg-0000000f"):
        session.check_network(subnet, ["sg-0000000f"], aws_region)


def test_missing_credentials_fail_before_any_request(
    aws_region: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a real IMDS
    with pytest.raises(session.MissingCredentialsError) as raised:
        session.check_credentials()
    message = str(raised.value)
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_PROFILE" in message
    with pytest.raises(session.MissingCredentialsError):
        session.client("ec2", aws_region)
    with pytest.raises(session.MissingCredentialsError):
        admin.install(aws_region)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert session.client("s3", aws_region).list_buckets()["Buckets"] == []
