"""`DynamoRegistry`: the fleet's instances and the jobs in one DynamoDB table.

The fleet layer's ``InstanceRegistry`` and the remote layer's ``JobTable``, each write
one conditional update, checked and applied by DynamoDB atomically (the fast path the
generic compare-and-swap implementations leave to drivers that can): any number of
callers allocating at once never double-book an instance, and an idle instance's agent
and an allocating caller can never both win (the agent marks the instance
``terminating`` only while it holds nothing, and nothing is allocated on an instance
that is not ``running``).

Table layout: partition key ``pk`` (``instance`` or ``job``), sort key ``sk`` (the
instance or job id), so a record's own fields never collide with the key; a local
secondary index on ``created`` lists jobs newest first. Numbers are DynamoDB decimals, so
adding and subtracting capacity is exact.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import botocore.exceptions
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from meadow_core.clouds.aws import names
from meadow_core.fleet.registry import (
    KIND_INSTANCE,
    RUNNING,
    TERMINATING,
    Allocation,
    InstanceRecord,
    InstanceRegistry,
)
from meadow_core.protocol import JOB_QUEUED, JOB_RUNNING, JobRecord
from meadow_core.remote.jobs import KIND_JOB, JobTable, job_record
from meadow_core.resources import Resources

__all__ = [
    "RUNNING",
    "TERMINATING",
    "Allocation",
    "DynamoRegistry",
    "InstanceRecord",
    "create_table",
]
CREATED_INDEX = "by_created"
#: Optional epoch-seconds attribute after which DynamoDB deletes an item (TTL).
EXPIRES_ATTRIBUTE = "expires_at"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
_NAME = re.compile(r"#(\w+)")
_RELEASE_ATTEMPTS = 20


def _dec(value: float | int) -> Decimal:
    """A Python number as DynamoDB's exact decimal (``str`` keeps 0.1 as 0.1)."""
    return Decimal(str(value))


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return _dec(value)
    if isinstance(value, Mapping):
        return {str(k): _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, set):
        return {_from_dynamo(v) for v in value}
    return value


def _item(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(_to_dynamo(v)) for k, v in data.items()}


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def _is_condition_failure(exc: botocore.exceptions.ClientError) -> bool:
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code == "ConditionalCheckFailedException"


def record_to_item(record: InstanceRecord) -> dict[str, Any]:
    data = record.to_plain()
    data["pk"] = KIND_INSTANCE
    data["sk"] = record.instance_id
    return _item(data)


def record_from_item(item: Mapping[str, Any]) -> InstanceRecord:
    data = _from_dynamo(_plain(item))
    data.pop("pk", None)
    return InstanceRecord.from_plain(data.pop("sk"), data)


def create_table(client: Any, table_name: str = names.TABLE_NAME) -> bool:
    """Create the registry table (tagged, on-demand billing) and wait until it is active.

    Returns False if it existed already.
    """
    try:
        client.create_table(
            TableName=table_name,
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": "created", "AttributeType": "N"},
            ],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            LocalSecondaryIndexes=[
                {
                    "IndexName": CREATED_INDEX,
                    "KeySchema": [
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "created", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
            Tags=names.managed_tags(),
        )
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceInUseException":
            return False
        raise
    client.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    client.update_time_to_live(
        TableName=table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES_ATTRIBUTE},
    )
    return True


class DynamoRegistry(InstanceRegistry, JobTable):
    """Instance and job records in the registry table, through a boto3 DynamoDB client."""

    def __init__(self, client: Any, table_name: str = names.TABLE_NAME) -> None:
        self.client = client
        self.table_name = table_name

    # -- plumbing ----------------------------------------------------------------

    def _key(self, kind: str, item_id: str) -> dict[str, Any]:
        return {"pk": {"S": kind}, "sk": {"S": item_id}}

    def _update(
        self,
        kind: str,
        item_id: str,
        update: str,
        condition: str | None,
        values: Mapping[str, Any],
        names_: Mapping[str, str] | None = None,
    ) -> bool:
        """One conditional update; False if its condition did not hold.

        ``#word`` in the expressions stands for the attribute ``word`` (so reserved words
        such as ``state`` need no thought); ``names_`` overrides that, e.g. for job ids.
        """
        text = update + " " + (condition or "")
        attribute_names = {f"#{w}": w for w in _NAME.findall(text)}
        attribute_names.update(names_ or {})
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": self._key(kind, item_id),
            "UpdateExpression": update,
            "ExpressionAttributeNames": attribute_names,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = _item(values)
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            self.client.update_item(**kwargs)
        except botocore.exceptions.ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def _get_raw(self, kind: str, item_id: str) -> dict[str, Any] | None:
        response = self.client.get_item(
            TableName=self.table_name, Key=self._key(kind, item_id), ConsistentRead=True
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    def _query(self, kind: str, **extra: Any) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="#pk = :kind",
            ExpressionAttributeNames={"#pk": "pk"},
            ExpressionAttributeValues={":kind": {"S": kind}},
            ConsistentRead=True,
            **extra,
        ):
            yield from page.get("Items", [])

    # -- instances -----------------------------------------------------------------

    def register(self, record: InstanceRecord) -> bool:
        """Add a newly launched instance; False if one with this id is registered."""
        return self._put_if_absent(record_to_item(record))

    def _put_if_absent(self, item: dict[str, Any]) -> bool:
        """One conditional write: False if an item with this key exists."""
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(#sk)",
                ExpressionAttributeNames={"#sk": "sk"},
            )
        except botocore.exceptions.ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def get(self, instance_id: str) -> InstanceRecord | None:
        item = self._get_raw(KIND_INSTANCE, instance_id)
        return record_from_item(item) if item else None

    def list(self) -> builtins.list[InstanceRecord]:
        return [record_from_item(i) for i in self._query(KIND_INSTANCE)]

    def remove(self, instance_id: str) -> None:
        """Forget an instance (it was terminated); a no-op if unknown."""
        self.client.delete_item(
            TableName=self.table_name, Key=self._key(KIND_INSTANCE, instance_id)
        )

    def try_allocate(
        self, instance_id: str, job_id: str, workers: int, per_worker: Resources
    ) -> bool:
        """Take ``workers`` slots of ``per_worker`` on a running instance, or return False.

        One conditional write: it succeeds only if the instance is ``running`` and its
        free CPU, memory and GPUs cover all the workers, so concurrent callers can never
        take more than the instance has. ``None`` amounts in ``per_worker`` count as 0:
        pass the amounts the host actually reserves. A job that already holds workers here
        with the same per-worker amounts gets more.
        """
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        cpu = _dec(per_worker.logical_cpu or 0)
        memory = _dec(per_worker.memory_gb or 0)
        gpus = _dec(per_worker.effective_gpus)
        values = {
            ":running": RUNNING,
            ":cpu": cpu * workers,
            ":mem": memory * workers,
            ":gpus": gpus * workers,
            ":now": time.time(),
            ":one": 1,
        }
        take = (
            "#free_logical_cpu = #free_logical_cpu - :cpu, "
            "#free_memory_gb = #free_memory_gb - :mem, "
            "#free_gpus = #free_gpus - :gpus, #last_activity = :now ADD #version :one"
        )
        fits = (
            "#state = :running AND #free_logical_cpu >= :cpu AND #free_memory_gb >= :mem "
            "AND #free_gpus >= :gpus"
        )
        job_name = {"#job": job_id}
        allocation = Allocation(
            workers=workers, logical_cpu=float(cpu), memory_gb=float(memory), gpus=float(gpus)
        )
        if self._update(
            KIND_INSTANCE,
            instance_id,
            "SET #allocations.#job = :alloc, " + take,
            fits + " AND attribute_not_exists(#allocations.#job)",
            {**values, ":alloc": allocation},
            job_name,
        ):
            return True
        # Maybe the job holds workers here already: grow that allocation.
        return self._update(
            KIND_INSTANCE,
            instance_id,
            "SET #allocations.#job.#workers = #allocations.#job.#workers + :workers, " + take,
            fits + " AND #allocations.#job.#logical_cpu = :pcpu "
            "AND #allocations.#job.#memory_gb = :pmem AND #allocations.#job.#gpus = :pgpus",
            {**values, ":workers": workers, ":pcpu": cpu, ":pmem": memory, ":pgpus": gpus},
            job_name,
        )

    def release(self, instance_id: str, job_id: str, workers: int | None = None) -> bool:
        """Give back ``workers`` of a job's slots (all of them by default).

        Idempotent: False if the instance or the job's allocation is gone. The write is
        conditional on the record's version, so a concurrent change makes it re-read.
        """
        for _ in range(_RELEASE_ATTEMPTS):
            item = self._get_raw(KIND_INSTANCE, instance_id)
            if item is None:
                return False
            plain = _plain(item)
            held = (plain.get("allocations") or {}).get(job_id)
            if held is None:
                return False
            count = int(held["workers"]) if workers is None else min(workers, int(held["workers"]))
            values: dict[str, Any] = {
                ":cpu": held["logical_cpu"] * count,
                ":mem": held["memory_gb"] * count,
                ":gpus": held["gpus"] * count,
                ":now": time.time(),
                ":v": plain["version"],
                ":one": 1,
            }
            give_back = (
                "#free_logical_cpu = #free_logical_cpu + :cpu, "
                "#free_memory_gb = #free_memory_gb + :mem, "
                "#free_gpus = #free_gpus + :gpus, #last_activity = :now ADD #version :one"
            )
            if count >= int(held["workers"]):
                update = "REMOVE #allocations.#job SET " + give_back
            else:
                update = "SET #allocations.#job.#workers = :left, " + give_back
                values[":left"] = int(held["workers"]) - count
            if self._update(
                KIND_INSTANCE, instance_id, update, "#version = :v", values, {"#job": job_id}
            ):
                return True
        raise RuntimeError(f"could not release {job_id} on {instance_id}: the record kept changing")

    def touch(self, instance_id: str, at: float | None = None) -> bool:
        """Record activity (the agent finished work) so the idle clock restarts."""
        return self._update(
            KIND_INSTANCE,
            instance_id,
            "SET #last_activity = :now",
            "attribute_exists(#sk)",
            {":now": time.time() if at is None else at},
        )

    def heartbeat(self, instance_id: str) -> bool:
        """The agent is alive; False if the record is gone (the sweeper removed it)."""
        return self._update(
            KIND_INSTANCE,
            instance_id,
            "SET #last_heartbeat = :now",
            "attribute_exists(#sk)",
            {":now": time.time()},
        )

    def mark_terminating_if_idle(self, instance_id: str, idle_since: float | None = None) -> bool:
        """Mark the instance ``terminating`` if it holds no allocation (and, with
        ``idle_since``, saw no allocation or release after it); only then may its agent
        terminate it.

        False means a caller allocated meanwhile (or the record is gone): the agent must
        keep serving and restart its idle clock.
        """
        values: dict[str, Any] = {
            ":terminating": TERMINATING,
            ":running": RUNNING,
            ":now": time.time(),
            ":one": 1,
            ":zero": 0,
        }
        condition = "#state = :running AND size(#allocations) = :zero"
        if idle_since is not None:
            condition += " AND #last_activity <= :since"
            values[":since"] = idle_since
        return self._update(
            KIND_INSTANCE,
            instance_id,
            "SET #state = :terminating, #terminating_since = :now ADD #version :one",
            condition,
            values,
        )

    def mark_terminating(self, instance_id: str) -> bool:
        """Stop all allocation on the instance whatever it holds (spot interruption)."""
        return self._update(
            KIND_INSTANCE,
            instance_id,
            "SET #state = :terminating, #terminating_since = :now ADD #version :one",
            "attribute_exists(#sk) AND #state = :running",
            {":terminating": TERMINATING, ":running": RUNNING, ":now": time.time(), ":one": 1},
        )

    # -- jobs ----------------------------------------------------------------------

    def put_job(self, job_id: str, fields: Mapping[str, Any]) -> bool:
        """Create a job record; False if the id exists (deterministic ids reattach)."""
        data = {**fields, "pk": KIND_JOB, "sk": job_id}
        data.setdefault("created", time.time())
        return self._put_if_absent(_item(data))

    @staticmethod
    def _job(item: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = _from_dynamo(_plain(item))
        data.pop("pk", None)
        data["job_id"] = data.pop("sk")
        return data

    def job_fields(self, job_id: str) -> dict[str, Any] | None:
        """Every stored field of a job plus ``job_id`` (integral numbers as ``int``)."""
        item = self._get_raw(KIND_JOB, job_id)
        return self._job(item) if item else None

    def list_jobs(self, limit: int = 50) -> builtins.list[JobRecord]:
        """The newest ``limit`` jobs, newest first."""
        response = self.client.query(
            TableName=self.table_name,
            IndexName=CREATED_INDEX,
            KeyConditionExpression="#pk = :kind",
            ExpressionAttributeNames={"#pk": "pk"},
            ExpressionAttributeValues={":kind": {"S": KIND_JOB}},
            ScanIndexForward=False,
            Limit=limit,
            ConsistentRead=True,
        )
        return [job_record(self._job(i)) for i in response.get("Items", [])]

    def all_jobs(self) -> builtins.list[dict[str, Any]]:
        """Every job's stored fields (the sweeper reconciles against them)."""
        return [self._job(i) for i in self._query(KIND_JOB)]

    def update_job(
        self, job_id: str, fields: Mapping[str, Any], expected_state: str | None = None
    ) -> bool:
        """Set fields of an existing job; False if it is unknown or not in
        ``expected_state`` (when given), so a state change happens once."""
        if not fields:
            raise ValueError("update_job needs at least one field")
        sets: builtins.list[str] = []
        names_: dict[str, str] = {}
        values: dict[str, Any] = {}
        for index, (name, value) in enumerate(fields.items()):
            names_[f"#f{index}"] = name
            values[f":f{index}"] = value
            sets.append(f"#f{index} = :f{index}")
        condition = "attribute_exists(#sk)"
        if expected_state is not None:
            condition += " AND #state = :expected"
            values[":expected"] = expected_state
        return self._update(KIND_JOB, job_id, "SET " + ", ".join(sets), condition, values, names_)

    def request_cancel(self, job_id: str) -> bool:
        """Ask for a queued or running job to be cancelled; False if the job is unknown."""
        if self._update(
            KIND_JOB,
            job_id,
            "SET #cancel_requested = :true, #cancel_requested_at = :now",
            "#state IN (:queued, :running)",
            {":true": True, ":now": time.time(), ":queued": JOB_QUEUED, ":running": JOB_RUNNING},
        ):
            return True
        return self._get_raw(KIND_JOB, job_id) is not None

    def remove_job(self, job_id: str) -> None:
        """Forget a job record; a no-op if unknown."""
        self.client.delete_item(TableName=self.table_name, Key=self._key(KIND_JOB, job_id))
