"""What a cloud driver implements for the remote layer: a work queue and a versioned
table (the object store is ``transport.base.ObjectStore``).

Both are synchronous: the remote layer calls them from threads, as the clouds' SDKs
are synchronous. Queue names are logical (``QueueName``); each driver maps them to
names its service accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol


class QueueName(NamedTuple):
    """A queue by role and owner: ``("job", job_id)``, ``("result", job_id)``,
    ``("control", machine_id)``."""

    role: str
    owner: str


class QueueGone(LookupError):
    """The queue does not exist (any more): its job is over or was cancelled."""


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One received message: its body, the handle to extend, release or acknowledge
    it, and how often it has been handed out (the first delivery is 1)."""

    body: bytes
    receipt: str
    delivery_count: int


class WorkQueue(Protocol):
    """At-least-once queues with visibility timeouts (SQS, Azure Storage Queues)."""

    def create(self, name: QueueName, hide_seconds: float) -> None:
        """Create the queue (idempotent); ``hide_seconds`` is its default visibility."""

    def delete(self, name: QueueName) -> None:
        """Delete the queue and its messages; a missing queue is no error."""

    def exists(self, name: QueueName) -> bool:
        """Whether the queue exists (a positive answer may be cached)."""

    def known(self, name: QueueName) -> bool:
        """Whether this object created or found the queue (no request)."""

    def forget(self, name: QueueName) -> None:
        """Drop what this object remembers of the queue."""

    def send(self, name: QueueName, bodies: Sequence[bytes]) -> None:
        """Enqueue messages (batched as the service allows); ``QueueGone`` if missing."""

    def receive(
        self, name: QueueName, max_messages: int, wait_seconds: float, hide_seconds: float | None
    ) -> list[Delivery]:
        """Long-poll up to ``max_messages``, hiding them ``hide_seconds`` (the queue's
        default when None); ``QueueGone`` if the queue is missing."""

    def extend(self, name: QueueName, delivery: Delivery, hide_seconds: float) -> None:
        """Keep a message in work hidden for ``hide_seconds`` more."""

    def release(self, name: QueueName, delivery: Delivery) -> None:
        """Make a received message visible again at once (hand it back)."""

    def ack(self, name: QueueName, deliveries: Sequence[Delivery]) -> None:
        """Delete received messages: their work is done."""

    def depth(self, name: QueueName) -> tuple[int, int | None]:
        """Approximate (visible, in flight) counts; in flight is None when the service
        does not report it."""


class VersionedTable(Protocol):
    """Items by (kind, key) with a version that changes on every write, for
    compare-and-swap (DynamoDB conditions, Azure Table ETags, Kubernetes
    resourceVersion). Values are plain data: str, int, float, bool, None, lists, dicts."""

    def get(self, kind: str, key: str) -> tuple[dict[str, Any], str] | None:
        """The item and its version, read consistently; None if absent."""

    def insert(self, kind: str, key: str, item: Mapping[str, Any]) -> bool:
        """Add an item; False (changing nothing) if one with this key exists."""

    def replace(self, kind: str, key: str, item: Mapping[str, Any], if_version: str) -> bool:
        """Overwrite the item if its version is still ``if_version``; else False."""

    def delete(self, kind: str, key: str) -> None:
        """Remove the item; a missing item is no error."""

    def scan(self, kind: str) -> Iterator[tuple[str, dict[str, Any], str]]:
        """Every item of a kind as (key, item, version), in no particular order."""
