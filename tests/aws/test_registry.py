"""DynamoRegistry (fleet registry and job table) against DynamoDB in moto server mode:
conditional writes hold under concurrency, so no instance is ever double-booked.

Real DynamoDB applies each conditional write atomically. moto's threaded server checks a
condition and applies the write in separate steps, so the concurrency tests here need the
dev cloud's moto to serialize DynamoDB requests; without that they fail (as they should:
such a backend does double-book)."""

from __future__ import annotations

import collections
import random
import threading
import time
from typing import Any

import boto3
import pytest

from meadow_core.allocation.selection import Offer
from meadow_core.clouds.aws import names, session
from meadow_core.clouds.aws.registry import (
    RUNNING,
    TERMINATING,
    DynamoRegistry,
    InstanceRecord,
    create_table,
)
from meadow_core.resources import Resources

pytestmark = [pytest.mark.devcloud]


@pytest.fixture
def registry(aws_env: dict[str, str]) -> DynamoRegistry:
    session.reset()
    client = session.client("dynamodb")
    assert create_table(client)
    assert not create_table(client), "a second create finds the table"
    return DynamoRegistry(client)


def _own_registry() -> DynamoRegistry:
    """A registry through its own boto3 session and client, like a separate caller."""
    return DynamoRegistry(boto3.session.Session().client("dynamodb"), names.TABLE_NAME)


def _instance(instance_id: str, cpu: float, memory: float, gpus: float = 0) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        instance_type="m5.xlarge",
        spot=True,
        price_per_hour=0.07,
        logical_cpu=cpu,
        memory_gb=memory,
        gpus=gpus,
        zone="us-east-2a",
    )


def test_register_get_list_and_remove(registry: DynamoRegistry) -> None:
    offer = Offer("c5.xlarge", True, 0.034, 4, 8, eviction_rate=5.0, flags=frozenset({"avx512"}))
    record = InstanceRecord.launched("i-0aaa", offer, "us-east-2b")
    assert registry.register(record)
    assert not registry.register(record), "an id is registered once"
    got = registry.get("i-0aaa")
    assert got is not None
    assert (got.instance_type, got.spot, got.price_per_hour, got.zone) == (
        "c5.xlarge",
        True,
        0.034,
        "us-east-2b",
    )
    assert (got.free_logical_cpu, got.free_memory_gb, got.flags) == (4, 8, ("avx512",))
    assert got.accepts_work and got.state == RUNNING
    warm = got.as_warm()
    assert (warm.instance_id, warm.logical_cpu, warm.memory_gb, warm.eviction_rate) == (
        "i-0aaa",
        4.0,
        8.0,
        5.0,
    )
    assert [r.instance_id for r in registry.list()] == ["i-0aaa"]
    registry.remove("i-0aaa")
    registry.remove("i-0aaa")
    assert registry.get("i-0aaa") is None
    assert registry.list() == []


def test_allocate_grow_and_release_account_exactly(registry: DynamoRegistry) -> None:
    registry.register(_instance("i-1", cpu=4, memory=3.0))
    per = Resources(logical_cpu=1, memory_gb=0.7)
    assert registry.try_allocate("i-1", "job-a", 2, per)
    assert registry.try_allocate("i-1", "job-a", 1, per), "the same job grows its allocation"
    assert not registry.try_allocate("i-1", "job-b", 1, Resources(logical_cpu=1, memory_gb=1)), (
        "0.9 GB left cannot hold 1 GB"
    )
    assert registry.try_allocate("i-1", "job-b", 1, Resources(logical_cpu=1, memory_gb=0.9))
    record = registry.get("i-1")
    assert record is not None
    assert record.allocations["job-a"]["workers"] == 3
    assert (record.free_logical_cpu, record.free_memory_gb) == (0, 0), "decimal math is exact"
    assert not registry.try_allocate("i-1", "job-c", 1, Resources(logical_cpu=0.1, memory_gb=0.1))

    assert registry.release("i-1", "job-a", workers=1)
    record = registry.get("i-1")
    assert record is not None and record.allocations["job-a"]["workers"] == 2
    assert (record.free_logical_cpu, record.free_memory_gb) == (1, 0.7)
    assert registry.release("i-1", "job-a")
    assert not registry.release("i-1", "job-a"), "releasing twice gives nothing back twice"
    assert registry.release("i-1", "job-b")
    assert not registry.release("i-unknown", "job-b")
    record = registry.get("i-1")
    assert record is not None
    assert record.allocations == {}
    assert (record.free_logical_cpu, record.free_memory_gb) == (4, 3.0)
    assert not registry.try_allocate("i-unknown", "job-a", 1, per)


def test_gpus_are_booked_too(registry: DynamoRegistry) -> None:
    registry.register(_instance("i-gpu", cpu=8, memory=32, gpus=1))
    assert registry.try_allocate("i-gpu", "job-a", 1, Resources(logical_cpu=1, gpu_memory=8))
    assert not registry.try_allocate("i-gpu", "job-b", 1, Resources(logical_cpu=1, gpus=1))
    assert registry.try_allocate("i-gpu", "job-b", 1, Resources(logical_cpu=1))


def test_ten_concurrent_callers_never_double_book(registry: DynamoRegistry) -> None:
    capacity = {"i-small": (2.0, 4.0), "i-mid": (4.0, 6.0), "i-big": (6.0, 10.0)}
    for instance_id, (cpu, memory) in capacity.items():
        registry.register(_instance(instance_id, cpu, memory))
    per = {
        f"job-{n}": Resources(logical_cpu=[0.5, 1, 1.5][n % 3], memory_gb=[1, 0.5, 2][n % 3])
        for n in range(10)
    }
    wins: collections.Counter[tuple[str, str]] = collections.Counter()
    lock = threading.Lock()
    start = threading.Barrier(10)
    errors: list[BaseException] = []

    def caller(job_id: str) -> None:
        try:
            mine = _own_registry()
            rng = random.Random(job_id)
            start.wait()
            full: set[str] = set()
            while len(full) < len(capacity):
                instance_id = rng.choice(sorted(set(capacity) - full))
                if mine.try_allocate(instance_id, job_id, 1, per[job_id]):
                    with lock:
                        wins[(instance_id, job_id)] += 1
                else:
                    full.add(instance_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(job,)) for job in per]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)

    assert sum(wins.values()) > 10, "the callers really competed for the capacity"
    for instance_id, (cpu, memory) in capacity.items():
        record = registry.get(instance_id)
        assert record is not None
        used_cpu = used_memory = 0.0
        for job_id, allocation in record.allocations.items():
            assert allocation["workers"] == wins[(instance_id, job_id)], (
                f"{job_id} on {instance_id}: every success recorded exactly once"
            )
            used_cpu += allocation["workers"] * allocation["logical_cpu"]
            used_memory += allocation["workers"] * allocation["memory_gb"]
        assert {j for (i, j) in wins if i == instance_id} == set(record.allocations)
        assert used_cpu <= cpu + 1e-9 and used_memory <= memory + 1e-9, "never double-booked"
        assert record.free_logical_cpu == pytest.approx(cpu - used_cpu)
        assert record.free_memory_gb == pytest.approx(memory - used_memory)
        for job_id, need in per.items():
            # A caller stops on an instance only when its next worker no longer fits there.
            assert (record.free_logical_cpu or 0) < (need.logical_cpu or 0) or (
                record.free_memory_gb or 0
            ) < (need.memory_gb or 0), f"{job_id} was refused room that {instance_id} had"


def test_idle_agent_and_allocating_caller_never_both_win(registry: DynamoRegistry) -> None:
    per = Resources(logical_cpu=1, memory_gb=1)
    assert registry.register(_instance("i-busy", 2, 2))
    assert registry.try_allocate("i-busy", "job-a", 1, per)
    assert not registry.mark_terminating_if_idle("i-busy"), "it holds an allocation"
    assert registry.release("i-busy", "job-a")
    assert not registry.mark_terminating_if_idle("i-busy", idle_since=time.time() - 60), (
        "a release after the agent's idle clock started means it was not idle"
    )
    assert registry.mark_terminating_if_idle("i-busy", idle_since=time.time() + 1)
    assert not registry.try_allocate("i-busy", "job-b", 1, per), "no work for a dying instance"
    record = registry.get("i-busy")
    assert record is not None and record.state == TERMINATING and not record.accepts_work
    assert record.terminating_since is not None

    outcomes: list[tuple[bool, bool]] = []
    for round_ in range(15):
        instance_id = f"i-race-{round_}"
        registry.register(_instance(instance_id, 2, 2))
        go = threading.Barrier(2)
        result: dict[str, Any] = {}

        def agent(
            instance_id: str = instance_id,
            go: threading.Barrier = go,
            result: dict[str, Any] = result,
        ) -> None:
            mine = _own_registry()
            go.wait()
            result["agent"] = mine.mark_terminating_if_idle(instance_id)

        def caller(
            instance_id: str = instance_id,
            go: threading.Barrier = go,
            result: dict[str, Any] = result,
        ) -> None:
            mine = _own_registry()
            go.wait()
            result["caller"] = mine.try_allocate(instance_id, "job-x", 1, per)

        threads = [threading.Thread(target=agent), threading.Thread(target=caller)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        outcomes.append((result["agent"], result["caller"]))
        record = registry.get(instance_id)
        assert record is not None
        assert result["agent"] != result["caller"], "exactly one of them wins"
        if result["agent"]:
            assert record.state == TERMINATING and record.allocations == {}
        else:
            assert record.state == RUNNING and set(record.allocations) == {"job-x"}
    assert len(outcomes) == 15


def test_spot_notice_stops_allocation_and_heartbeat_records_life(
    registry: DynamoRegistry,
) -> None:
    registry.register(_instance("i-spot", 4, 4))
    before = registry.get("i-spot")
    assert before is not None
    time.sleep(0.01)
    assert registry.heartbeat("i-spot")
    after = registry.get("i-spot")
    assert after is not None and after.last_heartbeat > before.last_heartbeat
    assert registry.try_allocate("i-spot", "job-a", 1, Resources(logical_cpu=1, memory_gb=1))
    assert registry.mark_terminating("i-spot"), "a spot notice ends allocation even when busy"
    assert not registry.try_allocate("i-spot", "job-b", 1, Resources(logical_cpu=1, memory_gb=1))
    assert not registry.heartbeat("i-gone")


def test_job_records(registry: DynamoRegistry) -> None:
    fields = {"kind": "map", "name": "f", "num_tasks": 3, "state": "running"}
    assert registry.put_job("job-1", {**fields, "created": 100.0})
    assert not registry.put_job("job-1", {**fields, "name": "other"}), "ids are created once"
    assert registry.put_job("job-2", {**fields, "created": 200.5})
    assert registry.put_job("job-3", {**fields, "created": 150.0})
    job = registry.get_job("job-1")
    assert job is not None
    assert (job.job_id, job.kind, job.name, job.state, job.num_tasks, job.created) == (
        "job-1",
        "map",
        "f",
        "running",
        3,
        100.0,
    )
    assert job.finished is None
    assert registry.get_job("nope") is None
    assert [j.job_id for j in registry.list_jobs(2)] == ["job-2", "job-3"]

    assert not registry.update_job("job-1", {"state": "succeeded"}, expected_state="queued")
    assert registry.update_job(
        "job-1", {"state": "succeeded", "finished": 123.25, "num_done": 3}, "running"
    )
    assert not registry.update_job("nope", {"state": "failed"})
    job = registry.get_job("job-1")
    assert job is not None and (job.state, job.finished, job.num_done) == ("succeeded", 123.25, 3)

    assert registry.request_cancel("job-2")
    assert registry.job_fields("job-2")["cancel_requested"] is True  # type: ignore[index]
    assert registry.request_cancel("job-1"), "a finished job is known, nothing to cancel"
    assert "cancel_requested" not in (registry.job_fields("job-1") or {})
    assert not registry.request_cancel("nope")
    assert {j["job_id"] for j in registry.all_jobs()} == {"job-1", "job-2", "job-3"}
    registry.remove_job("job-3")
    assert registry.get_job("job-3") is None
