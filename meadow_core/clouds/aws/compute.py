"""``Ec2Compute``: launching and terminating instances, one ``run_instances`` call per
instance type; capacity and quota errors let the fleet layer try its next choice.

Every instance is tagged as Meadow's, terminates itself on shutdown, and boots from
the user data in ``bootstrap``: no custom image, no SSH key, no inbound rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import botocore.exceptions

from meadow_core.allocation.selection import Offer
from meadow_core.clouds.aws import names
from meadow_core.fleet.ports import Launched

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


@dataclasses.dataclass(frozen=True)
class Ec2Compute:
    """The fleet layer's ``Compute`` on EC2: one ``run_instances`` call per choice."""

    ec2: Any
    ssm: Any
    ami_id: str | None  # None: the current Amazon Linux 2023, looked up when launching
    subnet_id: str | None
    security_group_ids: Sequence[str]
    instance_profile: str | None

    def launch(self, offer: Offer, count: int, boot_script: str, job_id: str) -> list[Launched]:
        """Launch ``count`` instances of one type in one call; raises
        ``botocore.exceptions.ClientError`` for the caller to fall back on."""
        tags = [*names.managed_tags(), {"Key": names.JOB_TAG_KEY, "Value": job_id[:255]}]
        kwargs: dict[str, Any] = {
            "ImageId": self.ami_id or default_ami(self.ssm),
            "InstanceType": offer.instance_type,
            "MinCount": count,
            "MaxCount": count,
            "UserData": boot_script,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        if self.subnet_id:
            kwargs["SubnetId"] = self.subnet_id
        if self.security_group_ids:
            kwargs["SecurityGroupIds"] = list(self.security_group_ids)
        if self.instance_profile:
            kwargs["IamInstanceProfile"] = {"Name": self.instance_profile}
        if offer.spot:
            kwargs["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        response = self.ec2.run_instances(**kwargs)
        return [
            Launched(i["InstanceId"], i.get("Placement", {}).get("AvailabilityZone") or "")
            for i in response["Instances"]
        ]

    def terminate(self, machine_ids: Sequence[str]) -> None:
        self.ec2.terminate_instances(InstanceIds=list(machine_ids))

    def is_capacity_error(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, botocore.exceptions.ClientError)
            and exc.response.get("Error", {}).get("Code") in CAPACITY_ERRORS
        )


def default_ami(ssm: Any) -> str:
    value: str = ssm.get_parameter(Name=DEFAULT_AMI_PARAMETER)["Parameter"]["Value"]
    return value
