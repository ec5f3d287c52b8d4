"""SQS queues of one EC2 job and the messages on them.

Per job: a work queue holding its task messages (every instance serving the job pulls
from it, so tasks balance by themselves and a dead instance's task reappears after the
visibility timeout) and a result queue the caller long-polls (no bucket listing in the
hot path). Per instance: a control queue on which callers say "serve job J with N
workers" or "cancel J". Bodies are base64 of the same msgpack records the local
transport uses (SQS bodies must be text).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from meadow_core import protocol
from meadow_core.clouds.aws import names
from meadow_core.clouds.aws.store import S3ObjectStore
from meadow_core.protocol import TaskMessage, TaskOutcome

#: How long a received task stays hidden; the instance extends it while the task runs.
TASK_VISIBILITY_SECONDS = 30
#: How often a running task's visibility is extended.
VISIBILITY_HEARTBEAT_SECONDS = 10


def job_queue_name(job_id: str) -> str:
    return names.job_queue_name(job_id)


def result_queue_name(job_id: str) -> str:
    return names.result_queue_name(job_id)


def control_queue_name(instance_id: str) -> str:
    return names.control_queue_name(instance_id)


def encode(message: dict[str, Any]) -> str:
    return base64.b64encode(protocol.pack(message)).decode()


def decode(body: str) -> dict[str, Any]:
    return protocol.unpack(base64.b64decode(body))


def task_body(task: TaskMessage) -> str:
    return encode({"op": "task", **task.to_wire()})


def outcome_body(outcome: TaskOutcome) -> str:
    return encode({"op": "result", **outcome.to_wire()})


def result_key(job_id: str, task_id: int, attempt: int) -> str:
    """Where an outcome is stored: the durable copy a reattaching caller replays."""
    return f"{results_prefix(job_id)}{task_id:08d}.{attempt:04d}"


def results_prefix(job_id: str) -> str:
    return f"results/{job_id}/outcomes/"


def final_outcomes(store: S3ObjectStore, job_id: str, at_least: int = 0) -> dict[int, TaskOutcome]:
    """Each task's final outcome as stored in S3 (tasks still retrying are absent).

    Only each task's latest attempt is read (keys sort by task, then attempt), and
    nothing at all when fewer than ``at_least`` tasks have an outcome: a listing is
    cheap, reading ten thousand outcomes is not."""
    latest: dict[int, str] = {}
    for key in store.list_keys(results_prefix(job_id)):
        latest[int(key.rsplit("/", 1)[-1].split(".", 1)[0])] = key
    if len(latest) < at_least:
        return {}

    def read(key: str) -> TaskOutcome:
        return TaskOutcome.from_wire(protocol.unpack(store.get(key)))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(read, latest.values()))
    return {o.task_id: o for o in outcomes if o.final}


def finished_fields(final: Mapping[int, TaskOutcome]) -> dict[str, Any]:
    """The job record's fields once every task's final outcome is in ``final``."""
    failed = sum(1 for o in final.values() if o.outcome != protocol.SUCCEEDED)
    return {
        "state": protocol.JOB_FAILED if failed else protocol.JOB_SUCCEEDED,
        "finished": time.time(),
        "num_done": len(final),
        "num_failed": failed,
    }


def spec_key(job_id: str) -> str:
    return f"results/{job_id}/spec"


def log_key(job_id: str, task_id: int, attempt: int) -> str:
    return f"logs/{job_id}/{task_id:08d}.{attempt:04d}.log"


class Queues:
    """Thin, synchronous wrapper over one SQS client: named queues, batches of ten."""

    def __init__(self, sqs: Any) -> None:
        self.sqs = sqs
        self._urls: dict[str, str] = {}

    def create(self, name: str) -> str:
        url: str = self.sqs.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": str(TASK_VISIBILITY_SECONDS),
                "MessageRetentionPeriod": str(4 * 24 * 3600),
            },
            tags={
                names.MANAGED_TAG_KEY: names.MANAGED_TAG_VALUE,
                "meadow:created": str(int(time.time())),
            },
        )["QueueUrl"]
        self._urls[name] = url
        return url

    def url(self, name: str) -> str | None:
        """The queue's URL, or None once it is deleted (the job is over)."""
        if name in self._urls:
            return self._urls[name]
        try:
            url: str = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except self.sqs.exceptions.QueueDoesNotExist:
            return None
        self._urls[name] = url
        return url

    def cached_url(self, name: str) -> str | None:
        """The URL if this object created or looked up the queue (no request)."""
        return self._urls.get(name)

    def forget(self, name: str) -> None:
        self._urls.pop(name, None)

    def send(self, url: str, bodies: Sequence[str]) -> None:
        for start in range(0, len(bodies), 10):
            batch = bodies[start : start + 10]
            response = self.sqs.send_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(batch)],
            )
            if response.get("Failed"):
                raise RuntimeError(f"SQS refused messages: {response['Failed']}")

    def receive(
        self, url: str, wait_seconds: int, max_messages: int = 10, visibility: int | None = None
    ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "QueueUrl": url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_seconds,
            "AttributeNames": ["ApproximateReceiveCount"],
        }
        if visibility is not None:
            kwargs["VisibilityTimeout"] = visibility
        messages: list[dict[str, Any]] = self.sqs.receive_message(**kwargs).get("Messages", [])
        return messages

    def delete_messages(self, url: str, receipts: Sequence[str]) -> None:
        for start in range(0, len(receipts), 10):
            batch = receipts[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(batch)],
            )

    def delete_queue(self, name: str) -> None:
        url = self.url(name)
        self.forget(name)
        if url is None:
            return
        with contextlib.suppress(self.sqs.exceptions.QueueDoesNotExist):
            self.sqs.delete_queue(QueueUrl=url)
