"""The agent on an EC2 instance: the fleet layer's machine, wired to AWS drivers.

Started by the boot script (``fleet.bootstrap``) with the region, bucket, registry
table and idle timeout. Everything it does (relaying SQS work into the local agent,
heartbeats, idle self-termination, spot hand-back, settling jobs nobody watches) is
generic: ``fleet.lifecycle`` and ``remote.relay``. What is here is EC2's view of the
machine: its id and spot notices from IMDSv2, and how it ends itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import urllib.error
from pathlib import Path

import boto3

from meadow_core.clouds.aws import metadata
from meadow_core.clouds.aws.queue import SqsWorkQueue
from meadow_core.clouds.aws.registry import DynamoRegistry
from meadow_core.clouds.aws.store import S3ObjectStore
from meadow_core.fleet.lifecycle import FleetMachine, run_machine
from meadow_core.hosts.local import LocalHost
from meadow_core.remote.caller import RemotePlace
from meadow_core.task_context import TASK_STORE_VARIABLE

log = logging.getLogger("meadow.instance_agent")


class Ec2Metadata:
    """The fleet layer's ``MachineMetadata`` from IMDSv2 (token renewed when it ends)."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._lock = threading.Lock()
        self._token = metadata.token()
        self._id: str | None = None

    def _get(self, path: str) -> str | None:
        try:
            return metadata.get(path, self._token)
        except urllib.error.HTTPError as exc:
            if exc.code != 401:  # the token expired (6 h): take a new one
                raise
            with self._lock:
                self._token = metadata.token()
            return metadata.get(path, self._token)

    def machine_id(self) -> str:
        if self._id is None:
            self._id = self._get("meta-data/instance-id") or ""
        return self._id

    def interruption_notice(self) -> str | None:
        return self._get("meta-data/spot/instance-action")

    def terminate_self(self) -> None:
        instance_id = self._id or metadata.get("meta-data/instance-id", metadata.token())
        if instance_id:
            ec2 = boto3.session.Session(region_name=self.region).client("ec2")
            ec2.terminate_instances(InstanceIds=[instance_id])


def machine(
    region: str, bucket: str, table: str, idle_timeout: float, home: Path, ec2: Ec2Metadata
) -> FleetMachine:
    session = boto3.session.Session(region_name=region)
    registry = DynamoRegistry(session.client("dynamodb"), table)
    place = RemotePlace(
        name=bucket,
        store=S3ObjectStore(bucket, session.client("s3")),
        queue=SqsWorkQueue(session.client("sqs")),
        jobs=registry,
    )
    # The local agent schedules against the instance type's size, as the registry
    # allocated it (not against what the kernel reports, which may differ a little).
    record = registry.get(ec2.machine_id())
    # current_task().store in tasks here is the bucket: what a task keeps there
    # outlives this instance and is read by the caller and by other instances.
    os.environ[TASK_STORE_VARIABLE] = f"s3://{bucket}?region={region}"
    # Tasks asking which instance they run on get the answer without a metadata call
    # (one that times out on a busy machine would say "not on EC2").
    os.environ[metadata.INSTANCE_ID_VARIABLE] = ec2.machine_id()
    local = LocalHost(
        home=home,
        idle_timeout=max(idle_timeout, 60.0),
        logical_cpu=record.logical_cpu if record else None,
        memory_gb=record.memory_gb if record else None,
    )
    return FleetMachine(ec2, place, registry, local, idle_timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--home", default=os.environ.get("MEADOW_HOME", "/var/lib/meadow"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("config %s", json.dumps(vars(args)))
    ec2 = Ec2Metadata(args.region)
    run_machine(
        lambda: machine(
            args.region, args.bucket, args.table, args.idle_timeout, Path(args.home), ec2
        ),
        ec2,
    )


if __name__ == "__main__":
    main()
