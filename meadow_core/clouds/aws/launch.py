"""Launching instances: one ``run_instances`` call per instance type, next choice on
capacity or quota errors.

Every instance is tagged as Meadow's, terminates itself on shutdown, and boots from
the user data in ``bootstrap``: no custom image, no SSH key, no inbound rule.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import botocore.exceptions

from meadow_core.clouds.aws import names

log = logging.getLogger("meadow.aws.launch")

#: The public parameter naming the current Amazon Linux 2023 image; the boot script
#: installs the caller's Python minor version with uv when the image has another one.
DEFAULT_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

#: Errors after which another instance type or zone may still work.
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InstanceLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "InsufficientCapacity",
        "Unsupported",
        "VcpuLimitExceeded",
    }
)


class LaunchError(RuntimeError):
    """No instance could be launched for any of the choices; says why for each."""


@dataclasses.dataclass(frozen=True)
class LaunchRequest:
    instance_type: str
    spot: bool
    count: int


@dataclasses.dataclass(frozen=True)
class Launched:
    instance_id: str
    instance_type: str
    spot: bool
    zone: str | None


@dataclasses.dataclass(frozen=True)
class LaunchSettings:
    ami_id: str
    user_data: str
    subnet_id: str | None
    security_group_ids: Sequence[str]
    instance_profile: str | None
    job_id: str


def default_ami(ssm: Any) -> str:
    value: str = ssm.get_parameter(Name=DEFAULT_AMI_PARAMETER)["Parameter"]["Value"]
    return value


def launch(ec2: Any, request: LaunchRequest, settings: LaunchSettings) -> list[Launched]:
    """Launch ``request.count`` instances of one type in one call; raises
    ``botocore.exceptions.ClientError`` for the caller to fall back on."""
    tags = [*names.managed_tags(), {"Key": names.JOB_TAG_KEY, "Value": settings.job_id[:255]}]
    kwargs: dict[str, Any] = {
        "ImageId": settings.ami_id,
        "InstanceType": request.instance_type,
        "MinCount": request.count,
        "MaxCount": request.count,
        "UserData": settings.user_data,
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
    }
    if settings.subnet_id:
        kwargs["SubnetId"] = settings.subnet_id
    if settings.security_group_ids:
        kwargs["SecurityGroupIds"] = list(settings.security_group_ids)
    if settings.instance_profile:
        kwargs["IamInstanceProfile"] = {"Name": settings.instance_profile}
    if request.spot:
        kwargs["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            },
        }
    response = ec2.run_instances(**kwargs)
    return [
        Launched(
            instance["InstanceId"],
            request.instance_type,
            request.spot,
            instance.get("Placement", {}).get("AvailabilityZone"),
        )
        for instance in response["Instances"]
    ]


def is_capacity_error(exc: Exception) -> bool:
    return (
        isinstance(exc, botocore.exceptions.ClientError)
        and exc.response.get("Error", {}).get("Code") in CAPACITY_ERRORS
    )
