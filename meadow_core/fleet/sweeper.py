"""The sweeper: the second line behind machines that clean up after themselves.

It reconciles what a cloud says is Meadow's (tagged machines, queues) with what the
registry and the job table know, and removes what nothing owns, leaving anything
younger than a grace period alone (a caller may be between launching a machine, or
creating a queue, and recording it):

* machines the registry does not know, knows as ``terminating`` for longer than the
  grace period, or whose agent sent no heartbeat for ``heartbeat_timeout`` (it died;
  nothing would end the machine): terminated;
* registry entries whose machine is gone: removed;
* queues of jobs that finished (or that the job table does not know), and control
  queues of machines that are gone: deleted;
* results and logs of jobs finished ``results_retention`` ago: deleted (a caller
  reattaching to a job replays them until then).

The policy is here once; a cloud lists and removes its own resources (``Inventory``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from meadow_core import keys
from meadow_core.fleet.registry import TERMINATING, InstanceRegistry
from meadow_core.protocol import TERMINAL_JOB_STATES
from meadow_core.remote import messages
from meadow_core.remote.jobs import JobTable
from meadow_core.remote.ports import QueueName
from meadow_core.transport.base import ObjectStore


@dataclasses.dataclass(frozen=True)
class ManagedMachine:
    """A running machine tagged as Meadow's."""

    machine_id: str
    launched_at: float


@dataclasses.dataclass(frozen=True)
class ManagedQueue:
    """A queue named as Meadow's, by the name the cloud knows it by."""

    name: str
    created: float


class Inventory(Protocol):
    """What a cloud lists and removes for the sweeper."""

    def machines(self) -> Sequence[ManagedMachine]: ...

    def terminate(self, machine_ids: Sequence[str]) -> None: ...

    def queues(self) -> Sequence[ManagedQueue]: ...

    def queue_name(self, queue: QueueName) -> str:
        """The cloud's name of a logical queue (to match listed queues to owners)."""

    def delete_queue(self, name: str) -> None: ...


@dataclasses.dataclass
class SweepReport:
    """What a sweep removed, by kind."""

    terminated_instances: list[str] = dataclasses.field(default_factory=list)
    deleted_queues: list[str] = dataclasses.field(default_factory=list)
    removed_registry_entries: list[str] = dataclasses.field(default_factory=list)
    deleted_objects: int = 0
    cleaned_jobs: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.terminated_instances
            or self.deleted_queues
            or self.removed_registry_entries
            or self.deleted_objects
            or self.cleaned_jobs
        )


def finished(job: dict[str, Any]) -> bool:
    return job.get("state") in TERMINAL_JOB_STATES


def sweep(
    inventory: Inventory,
    registry: InstanceRegistry | None,
    jobs: JobTable | None,
    store: Callable[[], ObjectStore],
    grace_seconds: float,
    results_retention_seconds: float,
    heartbeat_timeout_seconds: float,
    now: float | None = None,
    dry_run: bool = False,
) -> SweepReport:
    """Remove what nothing owns (see the module's docstring). ``registry`` and ``jobs``
    are None when the place is not installed: then every tagged thing is unowned.
    ``dry_run`` reports what would be removed and removes nothing."""
    report = SweepReport()
    now = time.time() if now is None else now
    cutoff = now - grace_seconds
    records = {r.instance_id: r for r in registry.list()} if registry else {}
    all_jobs = jobs.all_jobs() if jobs else []

    alive = {m.machine_id: m for m in inventory.machines()}
    doomed = []
    for machine_id, machine in alive.items():
        record = records.get(machine_id)
        if record is None:
            if machine.launched_at <= cutoff:
                doomed.append(machine_id)
        elif record.state == TERMINATING:
            if (record.terminating_since or record.last_activity) <= cutoff:
                doomed.append(machine_id)
        elif record.last_heartbeat <= now - heartbeat_timeout_seconds:
            doomed.append(machine_id)
    if doomed and not dry_run:
        inventory.terminate(doomed)
    report.terminated_instances.extend(doomed)
    living = set(alive) - set(doomed)

    for machine_id, record in records.items():
        if machine_id not in living and (machine_id in doomed or record.launched_at <= cutoff):
            assert registry is not None
            if not dry_run:
                registry.remove(machine_id)
            report.removed_registry_entries.append(machine_id)

    # A control queue belongs to a live machine, or to one launched too recently to
    # judge; a job's queues to a job that runs or finished within the grace period.
    owners = living | {i for i, r in records.items() if r.launched_at > cutoff} - set(doomed)
    owned = {inventory.queue_name(messages.control_queue(m)) for m in owners}
    for job in all_jobs:
        if not finished(job) or float(job.get("finished") or 0) > cutoff:
            owned.add(inventory.queue_name(messages.job_queue(job["job_id"])))
            owned.add(inventory.queue_name(messages.result_queue(job["job_id"])))
    for queue in inventory.queues():
        if queue.name not in owned and queue.created <= cutoff:
            if not dry_run:
                inventory.delete_queue(queue.name)
            report.deleted_queues.append(queue.name)

    expired = [
        job
        for job in all_jobs
        if finished(job)
        and not job.get("payload_deleted")
        and float(job.get("finished") or 0) <= now - results_retention_seconds
    ]
    if jobs is not None and expired:
        place_store = store()
        for job in expired:
            for prefix in keys.job_prefixes(job["job_id"]):
                if dry_run:
                    report.deleted_objects += len(place_store.list_keys(prefix))
                else:
                    report.deleted_objects += place_store.delete_prefix(prefix)
            if not dry_run:
                jobs.update_job(job["job_id"], {"payload_deleted": True})
            report.cleaned_jobs.append(job["job_id"])
    return report
