"""``SqsWorkQueue``: the remote layer's ``WorkQueue`` on SQS.

SQS bodies must be text, so the msgpack bodies travel as base64. Queue names follow
``names`` (80 characters of ``[A-Za-z0-9_-]``, a hash for longer ids); URLs are looked
up once and cached.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from meadow_core.clouds.aws import names
from meadow_core.remote.ports import Delivery, QueueGone, QueueName

_T = TypeVar("_T")
_NAMERS: dict[str, Callable[[str], str]] = {
    "job": names.job_queue_name,
    "result": names.result_queue_name,
    "control": names.control_queue_name,
}
#: How long SQS keeps an unread message (four days).
RETENTION_SECONDS = 4 * 24 * 3600


def queue_name(name: QueueName) -> str:
    """The SQS name of a logical queue."""
    return _NAMERS[name.role](name.owner)


class SqsWorkQueue:
    """Queues through one boto3 SQS client: batches of ten, URLs cached."""

    def __init__(self, sqs: Any) -> None:
        self.sqs = sqs
        self._urls: dict[QueueName, str] = {}

    def _url(self, name: QueueName) -> str:
        url = self._urls.get(name)
        if url is None:
            try:
                url = str(self.sqs.get_queue_url(QueueName=queue_name(name))["QueueUrl"])
            except self.sqs.exceptions.QueueDoesNotExist as exc:
                raise QueueGone(f"queue {queue_name(name)} does not exist") from exc
            self._urls[name] = url
        return url

    def _call(self, name: QueueName, call: Callable[[str], _T]) -> _T:
        """``call(url)``, turning SQS's missing-queue error into ``QueueGone``."""
        try:
            return call(self._url(name))
        except self.sqs.exceptions.QueueDoesNotExist as exc:
            self._urls.pop(name, None)
            raise QueueGone(f"queue {queue_name(name)} does not exist") from exc

    def _send_batch(self, url: str, entries: list[dict[str, str]]) -> dict[str, Any]:
        response: dict[str, Any] = self.sqs.send_message_batch(QueueUrl=url, Entries=entries)
        return response

    def _delete_batch(self, url: str, entries: list[dict[str, str]]) -> None:
        self.sqs.delete_message_batch(QueueUrl=url, Entries=entries)

    def create(self, name: QueueName, hide_seconds: float) -> None:
        self._urls[name] = str(
            self.sqs.create_queue(
                QueueName=queue_name(name),
                Attributes={
                    "VisibilityTimeout": str(int(hide_seconds)),
                    "MessageRetentionPeriod": str(RETENTION_SECONDS),
                },
                tags={
                    names.MANAGED_TAG_KEY: names.MANAGED_TAG_VALUE,
                    "meadow:created": str(int(time.time())),
                },
            )["QueueUrl"]
        )

    def delete(self, name: QueueName) -> None:
        with contextlib.suppress(QueueGone):
            self._call(name, lambda url: self.sqs.delete_queue(QueueUrl=url))
        self._urls.pop(name, None)

    def exists(self, name: QueueName) -> bool:
        try:
            self._url(name)
        except QueueGone:
            return False
        return True

    def known(self, name: QueueName) -> bool:
        return name in self._urls

    def forget(self, name: QueueName) -> None:
        self._urls.pop(name, None)

    def send(self, name: QueueName, bodies: Sequence[bytes]) -> None:
        for start in range(0, len(bodies), 10):
            entries = [
                {"Id": str(i), "MessageBody": base64.b64encode(body).decode()}
                for i, body in enumerate(bodies[start : start + 10])
            ]
            response: dict[str, Any] = self._call(
                name, functools.partial(self._send_batch, entries=entries)
            )
            if response.get("Failed"):
                raise RuntimeError(f"SQS refused messages: {response['Failed']}")

    def receive(
        self, name: QueueName, max_messages: int, wait_seconds: float, hide_seconds: float | None
    ) -> list[Delivery]:
        def receive(url: str) -> list[dict[str, Any]]:
            kwargs: dict[str, Any] = {
                "QueueUrl": url,
                "MaxNumberOfMessages": max_messages,
                "WaitTimeSeconds": int(wait_seconds),
                "AttributeNames": ["ApproximateReceiveCount"],
            }
            if hide_seconds is not None:
                kwargs["VisibilityTimeout"] = int(hide_seconds)
            messages: list[dict[str, Any]] = self.sqs.receive_message(**kwargs).get("Messages", [])
            return messages

        return [
            Delivery(
                body=base64.b64decode(m["Body"]),
                receipt=m["ReceiptHandle"],
                delivery_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
            )
            for m in self._call(name, receive)
        ]

    def _visibility(self, name: QueueName, delivery: Delivery, seconds: float) -> None:
        self._call(
            name,
            lambda url: self.sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=delivery.receipt, VisibilityTimeout=int(seconds)
            ),
        )

    def extend(self, name: QueueName, delivery: Delivery, hide_seconds: float) -> None:
        self._visibility(name, delivery, hide_seconds)

    def release(self, name: QueueName, delivery: Delivery) -> None:
        self._visibility(name, delivery, 0)

    def ack(self, name: QueueName, deliveries: Sequence[Delivery]) -> None:
        for start in range(0, len(deliveries), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": d.receipt}
                for i, d in enumerate(deliveries[start : start + 10])
            ]
            self._call(name, functools.partial(self._delete_batch, entries=entries))

    def depth(self, name: QueueName) -> tuple[int, int | None]:
        counts = self._call(
            name,
            lambda url: self.sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"],
        )
        return (
            int(counts["ApproximateNumberOfMessages"]),
            int(counts["ApproximateNumberOfMessagesNotVisible"]),
        )
