"""moto's EC2 instances as the VM simulator sees them (an `InstanceSource`).

Lists (Meadow-tagged) instances with DescribeInstances in every watched region, builds
what to boot from the instance and its user data (DescribeInstanceAttribute), serves
each VM the fake IMDS, and terminates an instance through EC2 when an announced spot
interruption falls due.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meadow_devcloud.ec2.imds import NOTICE_FILE, Identity, Imds
from meadow_devcloud.vm.cloud import BootSpec, InstanceState, MetadataServer

MANAGED_TAG = "meadow:managed"
STATES = {
    "pending": InstanceState.STARTING,
    "running": InstanceState.RUNNING,
    "stopped": InstanceState.STOPPED,
}  # stopping, shutting-down, terminated: ENDED


class Ec2Instances:
    """The instances of the moto at `url` in `regions` (only Meadow's if `managed_only`)."""

    def __init__(self, url: str, regions: tuple[str, ...], managed_only: bool) -> None:
        self.url = url
        self.regions = regions
        self.managed_only = managed_only
        # From the last `instances()`: region, owner account and description, by id.
        self._seen: dict[str, tuple[str, str, dict[str, Any]]] = {}
        import boto3  # here, so `devcloud status/stop/interrupt` start fast

        # The simulator is the cloud, not a client: it talks to its own moto explicitly.
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        self._ec2 = {
            region: session.client("ec2", region_name=region, endpoint_url=url)
            for region in regions
        }
        self._iam = session.client("iam", region_name=regions[0], endpoint_url=url)

    def clients(self) -> list[Any]:
        """The boto3 clients it calls moto with (for tools that count API calls)."""
        return [*self._ec2.values(), self._iam]

    def instances(self) -> Mapping[str, InstanceState]:
        seen: dict[str, tuple[str, str, dict[str, Any]]] = {}
        filters = [{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}] if self.managed_only else []
        for region, ec2 in self._ec2.items():
            for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    # moto attaches the instance profile to the first instance of a
                    # run_instances call only; EC2 gives it to all of them.
                    profile = next(
                        (
                            i["IamInstanceProfile"]
                            for i in reservation["Instances"]
                            if i.get("IamInstanceProfile")
                        ),
                        None,
                    )
                    for instance in reservation["Instances"]:
                        if profile is not None:
                            instance.setdefault("IamInstanceProfile", profile)
                        seen[instance["InstanceId"]] = (region, reservation["OwnerId"], instance)
        self._seen = seen
        return {
            instance_id: STATES.get(instance["State"]["Name"], InstanceState.ENDED)
            for instance_id, (_, _, instance) in seen.items()
        }

    def vm_name(self, instance_id: str) -> str:
        return instance_id.removeprefix("i-")

    def boot_spec(self, instance_id: str) -> BootSpec:
        region, owner, instance = self._seen[instance_id]
        attribute = self._ec2[region].describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
        encoded = attribute.get("UserData", {}).get("Value", "")
        user_data = base64.b64decode(encoded) if encoded else b""
        private_ip = instance.get("PrivateIpAddress") or "10.0.0.10"
        identity = Identity(
            instance_id=instance_id,
            instance_type=instance["InstanceType"],
            region=region,
            availability_zone=instance["Placement"]["AvailabilityZone"],
            image_id=instance.get("ImageId", ""),
            account_id=owner,
            private_ip=private_ip,
            lifecycle=instance.get("InstanceLifecycle", "on-demand"),
            role=self._role(instance),
            tokens_required=instance.get("MetadataOptions", {}).get("HttpTokens") == "required",
            user_data=user_data,
        )

        def imds(listener: socket.socket, vm_dir: Path) -> MetadataServer:
            return Imds(listener, identity, vm_dir / NOTICE_FILE, vm_dir / "imds.log")

        return BootSpec(
            user_data=user_data,
            hostname="ip-" + private_ip.replace(".", "-"),
            # Credentials come from the instance profile through IMDS, as on EC2.
            env={"AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": region},
            metadata=imds,
            details={"region": region},
        )

    def terminate(self, instance_id: str) -> None:
        found = self._seen.get(instance_id)
        if found is not None:  # otherwise it is gone already
            self._ec2[found[0]].terminate_instances(InstanceIds=[instance_id])

    def _role(self, instance: dict[str, Any]) -> str | None:
        arn = instance.get("IamInstanceProfile", {}).get("Arn")
        if not arn:
            return None
        name: str = arn.rsplit("/", 1)[-1]
        try:
            roles = self._iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
            return str(roles["Roles"][0]["RoleName"]) if roles["Roles"] else name
        except Exception:
            return name
