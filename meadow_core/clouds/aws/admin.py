"""Install, uninstall, sweep and list Meadow's resources in one AWS region.

`install` and `uninstall` are idempotent and report what they did. `clean` is the second
line of defence behind instances ending themselves: it reconciles what carries the
``meadow:managed`` tag (instances, queues) and the job payloads with the registry, and
removes what nothing owns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import botocore.exceptions

from meadow_core.clouds.aws import names, session
from meadow_core.clouds.aws.queue import queue_name as sqs_queue_name
from meadow_core.clouds.aws.registry import (
    DynamoRegistry,
    InstanceRecord,
    create_table,
)
from meadow_core.clouds.aws.store import S3ObjectStore
from meadow_core.fleet import bootstrap
from meadow_core.fleet.sweeper import ManagedMachine, ManagedQueue, SweepReport, sweep
from meadow_core.remote import store_cache
from meadow_core.remote.ports import QueueName

log = logging.getLogger(__name__)

DEFAULT_EXPIRY_DAYS = names.DEFAULT_EXPIRY_DAYS
DEFAULT_GRACE_SECONDS = names.DEFAULT_GRACE_SECONDS
DEFAULT_RESULTS_RETENTION_SECONDS = names.DEFAULT_RESULTS_RETENTION_SECONDS
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = names.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS
_ALIVE_STATES = ["pending", "running", "stopping", "stopped"]


@dataclasses.dataclass
class Report:
    """What a command did, one human-readable line per resource."""

    done: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


CleanReport = SweepReport


@dataclasses.dataclass(frozen=True)
class InstanceView:
    """One row of `meadow aws ls`."""

    record: InstanceRecord
    ec2_state: str

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.record.launched_at)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _partition(region_name: str) -> str:
    if region_name.startswith("cn-"):
        return "aws-cn"
    if region_name.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def agent_policy(region_name: str, account: str) -> dict[str, Any]:
    """The instance role's inline policy: only Meadow's bucket, queues and table, and
    terminating or tagging only instances tagged as Meadow's."""
    arn = _partition(region_name)
    bucket = names.bucket_name(account, region_name)
    queues = [f"arn:{arn}:sqs:{region_name}:{account}:{prefix}*" for prefix in names.QUEUE_PREFIXES]
    table = f"arn:{arn}:dynamodb:{region_name}:{account}:table/{names.TABLE_NAME}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Objects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": f"arn:{arn}:s3:::{bucket}/*",
            },
            {
                "Sid": "Bucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": f"arn:{arn}:s3:::{bucket}",
            },
            {
                "Sid": "Queues",
                "Effect": "Allow",
                "Action": [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:SendMessage",
                    "sqs:GetQueueUrl",
                    "sqs:GetQueueAttributes",
                ],
                "Resource": queues,
            },
            {
                # Its own control queue when it ends, and the queues of a job it settles.
                "Sid": "EndQueues",
                "Effect": "Allow",
                "Action": ["sqs:DeleteQueue"],
                "Resource": queues,
            },
            {
                "Sid": "Registry",
                "Effect": "Allow",
                "Action": [
                    "dynamodb:GetItem",
                    "dynamodb:PutItem",
                    "dynamodb:UpdateItem",
                    "dynamodb:DeleteItem",
                    "dynamodb:Query",
                ],
                "Resource": [table, f"{table}/index/*"],
            },
            {
                # An instance may end (and tag) only itself: a task that reads the
                # role's credentials cannot terminate its neighbours. aws:ARN is the
                # target's ARN, ec2:SourceInstanceARN the calling instance's.
                "Sid": "ItselfOnly",
                "Effect": "Allow",
                "Action": ["ec2:TerminateInstances", "ec2:CreateTags"],
                "Resource": f"arn:{arn}:ec2:{region_name}:{account}:instance/*",
                "Condition": {
                    "StringEquals": {
                        f"aws:ResourceTag/{names.MANAGED_TAG_KEY}": names.MANAGED_TAG_VALUE,
                        "aws:ARN": "${ec2:SourceInstanceARN}",
                    }
                },
            },
            {
                "Sid": "Describe",
                "Effect": "Allow",
                "Action": ["ec2:DescribeInstances", "ec2:DescribeTags"],
                "Resource": "*",
            },
        ],
    }


_ASSUME_ROLE = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


# -- install -------------------------------------------------------------------------------


def _install_bucket(region_name: str, bucket: str, expiry_days: int, report: Report) -> None:
    s3 = session.client("s3", region_name)
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region_name != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region_name}
    try:
        s3.create_bucket(**kwargs)
        report.done.append(f"created bucket {bucket}")
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "BucketAlreadyOwnedByYou":
            raise
        report.kept.append(f"bucket {bucket} exists")
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": names.managed_tags()})
    rules: list[dict[str, Any]] = [
        {
            "ID": f"meadow-expire-{prefix.rstrip('/')}",
            "Filter": {"Prefix": prefix},
            "Status": "Enabled",
            "Expiration": {"Days": expiry_days},
        }
        for prefix in names.JOB_OBJECT_PREFIXES
    ]
    rules.append(
        {
            "ID": "meadow-abort-incomplete-uploads",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    )
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})


def _install_role(region_name: str, account: str, report: Report) -> None:
    iam = session.client("iam", region_name)
    tags = names.managed_tags()
    try:
        iam.create_role(
            RoleName=names.ROLE_NAME,
            AssumeRolePolicyDocument=json.dumps(_ASSUME_ROLE),
            Description="Meadow instance agent: its bucket, queues, table and own instance",
            Tags=tags,
        )
        report.done.append(f"created IAM role {names.ROLE_NAME}")
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "EntityAlreadyExists":
            raise
        report.kept.append(f"IAM role {names.ROLE_NAME} exists")
    # One role serves every region: each install adds that region's statements.
    policy = agent_policy(region_name, account)
    try:
        existing = json.loads(
            _policy_text(
                iam.get_role_policy(RoleName=names.ROLE_NAME, PolicyName=names.ROLE_POLICY_NAME)
            )
        )
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
        existing = None
    if existing is not None:
        statements = [
            s
            for s in existing.get("Statement", [])
            if not str(s.get("Sid", "")).endswith(_sid_suffix(region_name))
        ]
        policy["Statement"] = statements + _suffixed(policy["Statement"], region_name)
    else:
        policy["Statement"] = _suffixed(policy["Statement"], region_name)
    iam.put_role_policy(
        RoleName=names.ROLE_NAME,
        PolicyName=names.ROLE_POLICY_NAME,
        PolicyDocument=json.dumps(policy),
    )
    try:
        iam.create_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE_NAME, Tags=tags)
        report.done.append(f"created instance profile {names.INSTANCE_PROFILE_NAME}")
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "EntityAlreadyExists":
            raise
        report.kept.append(f"instance profile {names.INSTANCE_PROFILE_NAME} exists")
    profile = iam.get_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE_NAME)
    roles = [r["RoleName"] for r in profile["InstanceProfile"].get("Roles", [])]
    if names.ROLE_NAME not in roles:
        iam.add_role_to_instance_profile(
            InstanceProfileName=names.INSTANCE_PROFILE_NAME, RoleName=names.ROLE_NAME
        )


def _policy_text(response: dict[str, Any]) -> str:
    document = response["PolicyDocument"]
    # boto3 decodes the URL-encoded JSON into a dict; older botocore returned text.
    return document if isinstance(document, str) else json.dumps(document)


def _sid_suffix(region_name: str) -> str:
    return "".join(part.capitalize() for part in region_name.split("-"))


def _suffixed(statements: list[dict[str, Any]], region_name: str) -> list[dict[str, Any]]:
    suffix = _sid_suffix(region_name)
    return [{**s, "Sid": f"{s['Sid']}{suffix}"} for s in statements]


def _default_vpc(region_name: str) -> str | None:
    vpcs = session.client("ec2", region_name).describe_vpcs(
        Filters=[{"Name": "isDefault", "Values": ["true"]}]
    )["Vpcs"]
    return str(vpcs[0]["VpcId"]) if vpcs else None


def _meadow_security_groups(region_name: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = session.client("ec2", region_name).describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": [names.SECURITY_GROUP_NAME]},
            {"Name": f"tag:{names.MANAGED_TAG_KEY}", "Values": [names.MANAGED_TAG_VALUE]},
        ]
    )["SecurityGroups"]
    return groups


def _install_security_group(region_name: str, report: Report) -> None:
    if _meadow_security_groups(region_name):
        report.kept.append(f"security group {names.SECURITY_GROUP_NAME} exists")
        return
    vpc = _default_vpc(region_name)
    if vpc is None:
        report.notes.append(
            f"{region_name} has no default VPC, so no security group was created: pass "
            "security_group_ids (with outbound HTTPS allowed) to AllocEC2Instance"
        )
        return
    created = session.client("ec2", region_name).create_security_group(
        GroupName=names.SECURITY_GROUP_NAME,
        Description="Meadow instances: no inbound traffic, outbound only",
        VpcId=vpc,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": names.managed_tags()}],
    )
    report.done.append(
        f"created security group {names.SECURITY_GROUP_NAME} ({created['GroupId']}) in {vpc}"
    )


def _publish_bundle(store: S3ObjectStore, report: Report) -> None:
    """Upload the agent bundle instances boot from."""
    bundle = bootstrap.publish(store, names.AGENT_EXTRAS)
    report.done.append(f"published the agent bundle to {store.location(bundle.key)}")


def install(
    region_name: str, expiry_days: int = DEFAULT_EXPIRY_DAYS, publish_bundle: bool = True
) -> Report:
    """Create (or bring up to date) everything Meadow needs in ``region_name``.

    ``publish_bundle`` also uploads the agent bundle instances boot from (else the first
    launch does it).
    """
    session.check_region(region_name)
    account = session.account_id()
    report = Report()
    bucket = names.bucket_name(account, region_name)
    _install_bucket(region_name, bucket, expiry_days, report)
    if create_table(session.client("dynamodb", region_name)):
        report.done.append(f"created DynamoDB table {names.TABLE_NAME}")
    else:
        report.kept.append(f"DynamoDB table {names.TABLE_NAME} exists")
    _install_role(region_name, account, report)
    _install_security_group(region_name, report)
    if publish_bundle:
        _publish_bundle(S3ObjectStore(bucket, session.client("s3", region_name)), report)
    return report


# -- uninstall -----------------------------------------------------------------------------


def _managed_instances(region_name: str, states: list[str]) -> Iterator[dict[str, Any]]:
    paginator = session.client("ec2", region_name).get_paginator("describe_instances")
    for page in paginator.paginate(
        Filters=[
            {"Name": f"tag:{names.MANAGED_TAG_KEY}", "Values": [names.MANAGED_TAG_VALUE]},
            {"Name": "instance-state-name", "Values": states},
        ]
    ):
        for reservation in page["Reservations"]:
            yield from reservation["Instances"]


def _meadow_queue_urls(region_name: str) -> list[str]:
    sqs = session.client("sqs", region_name)
    urls: list[str] = []
    for prefix in names.QUEUE_PREFIXES:
        for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=prefix):
            urls.extend(page.get("QueueUrls", []))
    return urls


def _delete_bucket(region_name: str, bucket: str, report: Report) -> None:
    s3 = session.client("s3", region_name)
    try:
        s3.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return
        raise
    count = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objects = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        for start in range(0, len(objects), 1000):
            s3.delete_objects(
                Bucket=bucket, Delete={"Objects": objects[start : start + 1000], "Quiet": True}
            )
            count += len(objects[start : start + 1000])
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    s3.delete_bucket(Bucket=bucket)
    report.done.append(f"deleted bucket {bucket} and its {count} objects")


def _delete_role(region_name: str, report: Report) -> None:
    iam = session.client("iam", region_name)
    try:
        profile = iam.get_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE_NAME)
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
    else:
        for role in profile["InstanceProfile"].get("Roles", []):
            iam.remove_role_from_instance_profile(
                InstanceProfileName=names.INSTANCE_PROFILE_NAME, RoleName=role["RoleName"]
            )
        iam.delete_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE_NAME)
        report.done.append(f"deleted instance profile {names.INSTANCE_PROFILE_NAME}")
    try:
        policies = iam.list_role_policies(RoleName=names.ROLE_NAME)["PolicyNames"]
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
        return
    for policy in policies:
        iam.delete_role_policy(RoleName=names.ROLE_NAME, PolicyName=policy)
    for attached in iam.list_attached_role_policies(RoleName=names.ROLE_NAME)["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=names.ROLE_NAME, PolicyArn=attached["PolicyArn"])
    iam.delete_role(RoleName=names.ROLE_NAME)
    report.done.append(f"deleted IAM role {names.ROLE_NAME}")


def uninstall(region_name: str) -> Report:
    """Remove everything Meadow created in ``region_name``: its instances (terminated),
    queues, bucket (emptied first), table, role, instance profile and security group.

    The role and instance profile are global: they go too, so uninstall the other regions
    Meadow runs in as well, or run `install` there again.
    """
    session.check_region(region_name)
    account = session.account_id()
    report = Report()
    ec2 = session.client("ec2", region_name)
    instances = [i["InstanceId"] for i in _managed_instances(region_name, _ALIVE_STATES)]
    if instances:
        ec2.terminate_instances(InstanceIds=instances)
        ec2.get_waiter("instance_terminated").wait(
            InstanceIds=instances, WaiterConfig={"Delay": 2, "MaxAttempts": 300}
        )
        report.done.append(f"terminated instances {', '.join(instances)}")
    sqs = session.client("sqs", region_name)
    for url in _meadow_queue_urls(region_name):
        sqs.delete_queue(QueueUrl=url)
        report.done.append(f"deleted queue {url.rsplit('/', 1)[-1]}")
    _delete_bucket(region_name, names.bucket_name(account, region_name), report)
    dynamodb = session.client("dynamodb", region_name)
    try:
        dynamodb.delete_table(TableName=names.TABLE_NAME)
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
    else:
        dynamodb.get_waiter("table_not_exists").wait(
            TableName=names.TABLE_NAME, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
        report.done.append(f"deleted DynamoDB table {names.TABLE_NAME}")
    _delete_role(region_name, report)
    for group in _meadow_security_groups(region_name):
        ec2.delete_security_group(GroupId=group["GroupId"])
        report.done.append(
            f"deleted security group {names.SECURITY_GROUP_NAME} ({group['GroupId']})"
        )
    return report


# -- clean ---------------------------------------------------------------------------------


def _registry(region_name: str) -> DynamoRegistry | None:
    """The registry, or None when the table does not exist (Meadow not installed)."""
    dynamodb = session.client("dynamodb", region_name)
    try:
        dynamodb.describe_table(TableName=names.TABLE_NAME)
    except botocore.exceptions.ClientError as exc:
        if _code(exc) == "ResourceNotFoundException":
            return None
        raise
    return DynamoRegistry(dynamodb, names.TABLE_NAME)


def _store(region_name: str) -> S3ObjectStore:
    return S3ObjectStore(
        names.bucket_name(session.account_id(), region_name), session.client("s3", region_name)
    )


def _installed(region_name: str) -> tuple[S3ObjectStore, DynamoRegistry]:
    session.check_region(region_name)
    registry = _registry(region_name)
    if registry is None:
        raise session.AwsConfigurationError(
            f"Meadow is not installed in {region_name}: run `meadow aws install --region "
            f"{region_name}` first"
        )
    return _store(region_name), registry


def cache_summary(region_name: str, older_than: float) -> list[store_cache.KindSummary]:
    """What the bucket keeps for reuse, per kind, and what a prune would delete."""
    store, registry = _installed(region_name)
    return store_cache.summarize(store, registry, older_than)


def cache_prune(region_name: str, older_than: float, dry_run: bool) -> store_cache.PruneReport:
    """Delete reusable objects no job of the last ``older_than`` seconds used."""
    store, registry = _installed(region_name)
    return store_cache.prune(store, registry, older_than, dry_run=dry_run)


class _Ec2Inventory:
    """What the sweeper sees of a region: tagged instances and ``meadow-*`` queues."""

    def __init__(self, region_name: str) -> None:
        self.region_name = region_name
        self.sqs = session.client("sqs", region_name)
        self.urls: dict[str, str] = {}

    def machines(self) -> list[ManagedMachine]:
        return [
            ManagedMachine(i["InstanceId"], i["LaunchTime"].timestamp())
            for i in _managed_instances(self.region_name, _ALIVE_STATES)
        ]

    def terminate(self, machine_ids: Sequence[str]) -> None:
        session.client("ec2", self.region_name).terminate_instances(InstanceIds=list(machine_ids))

    def queues(self) -> list[ManagedQueue]:
        found = []
        for url in _meadow_queue_urls(self.region_name):
            name = url.rsplit("/", 1)[-1]
            self.urls[name] = url
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["CreatedTimestamp"]
            )["Attributes"]
            found.append(ManagedQueue(name, float(attributes["CreatedTimestamp"])))
        return found

    def queue_name(self, queue: QueueName) -> str:
        return sqs_queue_name(queue)

    def delete_queue(self, name: str) -> None:
        self.sqs.delete_queue(QueueUrl=self.urls[name])


def clean(
    region_name: str,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    results_retention_seconds: float = DEFAULT_RESULTS_RETENTION_SECONDS,
    heartbeat_timeout_seconds: float = DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
    dry_run: bool = False,
) -> CleanReport:
    """Remove what nothing owns in ``region_name`` (the policy: ``fleet.sweeper``);
    leave anything younger than ``grace_seconds`` alone; with ``dry_run`` only say what."""
    session.check_region(region_name)
    registry = _registry(region_name)
    report = sweep(
        _Ec2Inventory(region_name),
        registry,
        registry,
        lambda: _store(region_name),
        grace_seconds,
        results_retention_seconds,
        heartbeat_timeout_seconds,
        dry_run=dry_run,
    )
    if registry is None:
        report.notes.append(
            f"no registry table in {region_name}: everything tagged as Meadow's is unowned"
        )
    return report


# -- ls ------------------------------------------------------------------------------------


def ls(region_name: str) -> list[InstanceView]:
    """Meadow's instances in ``region_name`` as the registry knows them, with EC2's state."""
    _, registry = _installed(region_name)
    records = registry.list()
    states: dict[str, str] = {}
    all_states = [*_ALIVE_STATES, "shutting-down", "terminated"]
    for instance in _managed_instances(region_name, all_states):
        states[instance["InstanceId"]] = instance["State"]["Name"]
    views = [InstanceView(r, states.get(r.instance_id, "unknown")) for r in records]
    return sorted(views, key=lambda v: v.record.launched_at)
