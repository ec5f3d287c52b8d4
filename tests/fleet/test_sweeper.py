"""The sweeper's policy over the generic registry and job table, with an inventory that
records what a cloud would be told to remove."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from meadow_core.allocation.selection import Offer
from meadow_core.fleet.registry import InstanceRecord, VersionedInstanceRegistry
from meadow_core.fleet.sweeper import ManagedMachine, ManagedQueue, sweep
from meadow_core.protocol import JOB_RUNNING, JOB_SUCCEEDED
from meadow_core.remote.jobs import VersionedJobTable
from meadow_core.remote.ports import QueueName
from meadow_core.transport.local import LocalObjectStore
from tests.memory_table import MemoryVersionedTable

HOUR = 3600.0


class Inventory:
    def __init__(self, machines: list[ManagedMachine], queues: list[ManagedQueue]) -> None:
        self._machines, self._queues = machines, queues
        self.terminated: list[str] = []
        self.deleted: list[str] = []

    def machines(self) -> Sequence[ManagedMachine]:
        return self._machines

    def terminate(self, machine_ids: Sequence[str]) -> None:
        self.terminated.extend(machine_ids)

    def queues(self) -> Sequence[ManagedQueue]:
        return self._queues

    def queue_name(self, queue: QueueName) -> str:
        return f"q-{queue.role}-{queue.owner}"

    def delete_queue(self, name: str) -> None:
        self.deleted.append(name)


def test_sweep_removes_only_what_nothing_owns(tmp_path: Path) -> None:
    now = time.time()
    old, young = now - 2 * HOUR, now - 60
    table = MemoryVersionedTable(latency_seconds=0)
    registry, jobs = VersionedInstanceRegistry(table), VersionedJobTable(table)
    offer = Offer("m5.large", False, 0.1, 2, 8)
    for machine_id, launched in (("i-live", old), ("i-silent", old), ("i-gone", old)):
        record = InstanceRecord.launched(machine_id, offer, "")
        record.launched_at = launched
        record.last_heartbeat = now - 20 * HOUR if machine_id == "i-silent" else now
        registry.register(record)
    jobs.put_job("running", {"state": JOB_RUNNING, "num_tasks": 1})
    jobs.put_job("done", {"state": JOB_SUCCEEDED, "finished": now - 3 * 86400})
    store = LocalObjectStore(tmp_path / "store")
    store.put("results/done/outcomes/00000000.0001", b"x")
    store.put("results/running/outcomes/00000000.0001", b"x")
    inventory = Inventory(
        machines=[
            ManagedMachine("i-live", old),
            ManagedMachine("i-silent", old),
            ManagedMachine("i-unknown", old),
            ManagedMachine("i-new", young),  # launched a minute ago, not registered yet
        ],
        queues=[
            ManagedQueue("q-control-i-live", old),
            ManagedQueue("q-control-i-gone", old),
            ManagedQueue("q-job-running", old),
            ManagedQueue("q-job-done", old),
            ManagedQueue("q-job-unknown", young),  # too young to judge
        ],
    )
    dry = sweep(inventory, registry, jobs, lambda: store, HOUR, 86400, 15 * 60, now, dry_run=True)
    assert sorted(dry.terminated_instances) == ["i-silent", "i-unknown"]
    assert sorted(dry.deleted_queues) == ["q-control-i-gone", "q-job-done"]
    assert dry.cleaned_jobs == ["done"] and dry.deleted_objects == 1
    assert inventory.terminated == [] and inventory.deleted == [], "a dry run removes nothing"
    assert registry.get("i-gone") is not None and store.exists(
        "results/done/outcomes/00000000.0001"
    )
    report = sweep(inventory, registry, jobs, lambda: store, HOUR, 86400, 15 * 60, now)
    assert sorted(inventory.terminated) == ["i-silent", "i-unknown"]
    assert sorted(report.removed_registry_entries) == ["i-gone", "i-silent"]
    assert sorted(inventory.deleted) == ["q-control-i-gone", "q-job-done"]
    assert report.cleaned_jobs == ["done"] and report.deleted_objects == 1
    assert store.exists("results/running/outcomes/00000000.0001")
    assert not store.exists("results/done/outcomes/00000000.0001")
    assert (jobs.job_fields("done") or {}).get("payload_deleted") is True
    again = sweep(inventory, registry, jobs, lambda: store, HOUR, 86400, 15 * 60, now)
    assert again.cleaned_jobs == [], "a cleaned job's payload is not deleted twice"
