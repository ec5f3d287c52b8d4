"""A remote job's stored outcomes and spec, read back from the object store."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Mapping
from typing import Any

from meadow_core import keys, protocol
from meadow_core.protocol import JobSpec, TaskOutcome
from meadow_core.transport.base import ObjectStore


def read_outcome(store: ObjectStore, key: str) -> TaskOutcome:
    return TaskOutcome.from_wire(protocol.unpack(store.get(key)))


def read_spec(store: ObjectStore, job_id: str) -> JobSpec:
    """The job's spec (``KeyError`` if the store has none)."""
    return JobSpec.from_wire(protocol.unpack(store.get(keys.spec_key(job_id))))


def final_outcomes(store: ObjectStore, job_id: str, at_least: int = 0) -> dict[int, TaskOutcome]:
    """Each task's final outcome as stored (tasks still retrying are absent).

    Only each task's latest attempt is read (keys sort by task, then attempt), and
    nothing at all when fewer than ``at_least`` tasks have an outcome: a listing is
    cheap, reading ten thousand outcomes is not."""
    latest: dict[int, str] = {}
    for key in store.list_keys(keys.results_prefix(job_id)):
        latest[keys.task_of_result_key(key)] = key
    if len(latest) < at_least:
        return {}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda key: read_outcome(store, key), latest.values()))
    return {o.task_id: o for o in outcomes if o.final}


def finished_fields(final: Mapping[int, TaskOutcome]) -> dict[str, Any]:
    """The job record's fields once every task's final outcome is in ``final``."""
    failed = sum(1 for o in final.values() if o.outcome != protocol.SUCCEEDED)
    # Only a cancel gives a task a cancelled outcome: the job stays cancelled, as on
    # LocalHost, when a waiter that got every outcome records it afterwards.
    cancelled = any(o.outcome == protocol.CANCELLED for o in final.values())
    return {
        "state": protocol.JOB_CANCELLED
        if cancelled
        else protocol.JOB_FAILED
        if failed
        else protocol.JOB_SUCCEEDED,
        "finished": time.time(),
        "num_done": len(final),
        "num_failed": failed,
    }
