"""The generic registry and job table over a ``VersionedTable`` (what Azure Table and
other stores without conditional expressions get): compare-and-swap keeps the same
guarantees as DynamoDB's single conditional writes."""

from __future__ import annotations

import threading
import time

import pytest

from meadow_core.allocation.selection import Offer
from meadow_core.fleet.registry import (
    RUNNING,
    TERMINATING,
    InstanceRecord,
    VersionedInstanceRegistry,
)
from meadow_core.protocol import JOB_CANCELLED, JOB_RUNNING, JOB_SUCCEEDED
from meadow_core.remote.jobs import VersionedJobTable
from meadow_core.resources import Resources
from tests.memory_table import MemoryVersionedTable

WORKER = Resources(logical_cpu=1, memory_gb=2)


@pytest.fixture
def registry() -> VersionedInstanceRegistry:
    return VersionedInstanceRegistry(MemoryVersionedTable())


def _launched(registry: VersionedInstanceRegistry, instance_id: str, cpu: float = 4) -> None:
    offer = Offer("c5.xlarge", True, 0.034, cpu, cpu * 2, eviction_rate=5.0)
    assert registry.register(InstanceRecord.launched(instance_id, offer, "zone-a"))


def test_register_is_insert_if_absent_and_records_round_trip(
    registry: VersionedInstanceRegistry,
) -> None:
    _launched(registry, "i-1")
    assert not registry.register(InstanceRecord.launched("i-1", Offer("x", False, 1, 1, 1), ""))
    record = registry.get("i-1")
    assert record is not None and record.instance_type == "c5.xlarge" and record.spot
    assert record.free_logical_cpu == 4 and record.state == RUNNING
    assert [r.instance_id for r in registry.list()] == ["i-1"]
    registry.remove("i-1")
    assert registry.get("i-1") is None and registry.list() == []


def test_allocate_grow_and_release_account_exactly(registry: VersionedInstanceRegistry) -> None:
    _launched(registry, "i-1")
    assert registry.try_allocate("i-1", "job-a", 2, WORKER)
    assert registry.try_allocate("i-1", "job-a", 1, WORKER), "the same job grows"
    assert not registry.try_allocate("i-1", "job-b", 2, WORKER), "only 1 CPU is left"
    assert not registry.try_allocate("i-1", "job-a", 1, Resources(logical_cpu=0.5)), (
        "a job's allocation keeps one per-worker size"
    )
    record = registry.get("i-1")
    assert record is not None
    assert record.allocations["job-a"]["workers"] == 3
    assert (record.free_logical_cpu, record.free_memory_gb) == (1, 2)
    assert registry.release("i-1", "job-a", 1)
    assert registry.release("i-1", "job-a")
    assert not registry.release("i-1", "job-a"), "releasing twice changes nothing"
    record = registry.get("i-1")
    assert record is not None and record.allocations == {}
    assert (record.free_logical_cpu, record.free_memory_gb) == (4, 8)


def test_concurrent_callers_never_double_book(registry: VersionedInstanceRegistry) -> None:
    for index in range(3):
        _launched(registry, f"i-{index}")
    won: list[tuple[str, str]] = []
    start = threading.Barrier(12)

    def caller(job: str) -> None:
        start.wait()
        for index in range(3):
            if registry.try_allocate(f"i-{index}", job, 1, WORKER):
                won.append((job, f"i-{index}"))

    threads = [threading.Thread(target=caller, args=(f"job-{n}",)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_instance = {f"i-{i}": sum(1 for _, m in won if m == f"i-{i}") for i in range(3)}
    assert per_instance == {"i-0": 4, "i-1": 4, "i-2": 4}, "each 4-CPU machine, 4 workers"
    for record in registry.list():
        assert record.free_logical_cpu == 0 and len(record.allocations) == 4


def test_an_idle_machine_and_an_allocating_caller_never_both_win(
    registry: VersionedInstanceRegistry,
) -> None:
    for round_ in range(20):
        machine = f"i-{round_}"
        _launched(registry, machine)
        results: dict[str, bool] = {}
        start = threading.Barrier(2)

        def allocate(
            machine: str = machine,
            start: threading.Barrier = start,
            results: dict[str, bool] = results,
        ) -> None:
            start.wait()
            results["caller"] = registry.try_allocate(machine, "job", 1, WORKER)

        def end(
            machine: str = machine,
            start: threading.Barrier = start,
            results: dict[str, bool] = results,
        ) -> None:
            start.wait()
            results["machine"] = registry.mark_terminating_if_idle(machine)

        threads = [threading.Thread(target=allocate), threading.Thread(target=end)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results["caller"] != results["machine"], results
        record = registry.get(machine)
        assert record is not None
        assert record.state == (TERMINATING if results["machine"] else RUNNING)


def test_idle_since_and_interruption(registry: VersionedInstanceRegistry) -> None:
    _launched(registry, "i-1")
    before = time.time() - 60
    assert registry.try_allocate("i-1", "job", 1, WORKER) and registry.release("i-1", "job")
    assert not registry.mark_terminating_if_idle("i-1", idle_since=before), (
        "activity after idle_since keeps the machine"
    )
    assert registry.heartbeat("i-1") and not registry.heartbeat("i-gone")
    assert registry.try_allocate("i-1", "job", 1, WORKER)
    assert registry.mark_terminating("i-1"), "an interruption ends it whatever it holds"
    assert not registry.try_allocate("i-1", "other", 1, WORKER)


def test_job_table_records_each_state_change_once() -> None:
    jobs = VersionedJobTable(MemoryVersionedTable())
    assert jobs.put_job("job-1", {"kind": "map", "num_tasks": 3, "state": JOB_RUNNING})
    assert not jobs.put_job("job-1", {"kind": "map"}), "a deterministic id reattaches"
    assert jobs.put_job("job-2", {"kind": "function", "state": JOB_RUNNING, "created": 1.0})
    assert [r.job_id for r in jobs.list_jobs()] == ["job-1", "job-2"], "newest first"
    assert jobs.update_job("job-1", {"state": JOB_SUCCEEDED}, expected_state=JOB_RUNNING)
    assert not jobs.update_job("job-1", {"state": JOB_SUCCEEDED}, expected_state=JOB_RUNNING)
    record = jobs.get_job("job-1")
    assert record is not None and record.state == JOB_SUCCEEDED and record.num_tasks == 3
    assert jobs.request_cancel("job-1"), "a finished job is known"
    fields = jobs.job_fields("job-1")
    assert fields is not None and "cancel_requested" not in fields, "over: nothing to cancel"
    assert jobs.request_cancel("job-2")
    assert (jobs.job_fields("job-2") or {}).get("cancel_requested") is True
    assert not jobs.request_cancel("job-3")
    jobs.update_job("job-2", {"state": JOB_CANCELLED})
    jobs.remove_job("job-2")
    assert jobs.get_job("job-2") is None
    assert {f["job_id"] for f in jobs.all_jobs()} == {"job-1"}
