"""``JobTable``: the records of a remote place's jobs (state, counts, what they read).

The caller creates a job's record (a conditional insert: a deterministic job id that
exists reattaches instead of launching twice); the caller, or a machine settling a job
whose caller died, records it as over exactly once (``expected_state``).
``VersionedJobTable`` implements it over any ``VersionedTable``; a driver may
override a method with a faster single conditional write (DynamoDB does).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from typing import Any

from meadow_core.protocol import JOB_QUEUED, JOB_RUNNING, JobRecord
from meadow_core.remote.ports import VersionedTable

KIND_JOB = "job"
_CAS_ATTEMPTS = 20


def job_record(fields: Mapping[str, Any]) -> JobRecord:
    """A job as `meadow jobs` shows it; fields never written read as 0 or empty."""
    finished = fields.get("finished")
    return JobRecord(
        job_id=str(fields["job_id"]),
        kind=str(fields.get("kind", "")),
        name=str(fields.get("name", "")),
        state=str(fields.get("state", "")),
        num_tasks=int(fields.get("num_tasks", 0)),
        num_done=int(fields.get("num_done", 0)),
        num_failed=int(fields.get("num_failed", 0)),
        created=float(fields.get("created", 0.0)),
        finished=None if finished is None else float(finished),
    )


class JobTable(abc.ABC):
    """Job records by id. Every method is synchronous (called from threads)."""

    @abc.abstractmethod
    def put_job(self, job_id: str, fields: Mapping[str, Any]) -> bool:
        """Create a job record; False if the id exists (deterministic ids reattach)."""

    @abc.abstractmethod
    def job_fields(self, job_id: str) -> dict[str, Any] | None:
        """Every stored field of a job plus ``job_id``."""

    def get_job(self, job_id: str) -> JobRecord | None:
        fields = self.job_fields(job_id)
        return job_record(fields) if fields else None

    @abc.abstractmethod
    def all_jobs(self) -> list[dict[str, Any]]:
        """Every job's stored fields (the sweeper and the cache pruner read them)."""

    def list_jobs(self, limit: int = 50) -> list[JobRecord]:
        """The newest ``limit`` jobs, newest first."""
        jobs = sorted(self.all_jobs(), key=lambda f: float(f.get("created", 0)), reverse=True)
        return [job_record(fields) for fields in jobs[:limit]]

    @abc.abstractmethod
    def update_job(
        self, job_id: str, fields: Mapping[str, Any], expected_state: str | None = None
    ) -> bool:
        """Set fields of an existing job; False if it is unknown or not in
        ``expected_state`` (when given), so a state change happens once."""

    @abc.abstractmethod
    def request_cancel(self, job_id: str) -> bool:
        """Ask for a queued or running job to be cancelled; False if the job is unknown."""

    @abc.abstractmethod
    def remove_job(self, job_id: str) -> None:
        """Forget a job record; a no-op if unknown."""


class VersionedJobTable(JobTable):
    """Job records in a ``VersionedTable``: reads, then compare-and-swap writes."""

    def __init__(self, table: VersionedTable) -> None:
        self.table = table

    def put_job(self, job_id: str, fields: Mapping[str, Any]) -> bool:
        return self.table.insert(KIND_JOB, job_id, {"created": time.time(), **fields})

    def job_fields(self, job_id: str) -> dict[str, Any] | None:
        found = self.table.get(KIND_JOB, job_id)
        return None if found is None else {**found[0], "job_id": job_id}

    def all_jobs(self) -> list[dict[str, Any]]:
        return [{**item, "job_id": key} for key, item, _ in self.table.scan(KIND_JOB)]

    def _change(self, job_id: str, fields: Mapping[str, Any], states: tuple[str, ...]) -> bool:
        for _ in range(_CAS_ATTEMPTS):
            found = self.table.get(KIND_JOB, job_id)
            if found is None:
                return False
            item, version = found
            if states and item.get("state") not in states:
                return False
            if self.table.replace(KIND_JOB, job_id, {**item, **fields}, version):
                return True
        raise RuntimeError(f"could not update job {job_id}: its record kept changing")

    def update_job(
        self, job_id: str, fields: Mapping[str, Any], expected_state: str | None = None
    ) -> bool:
        if not fields:
            raise ValueError("update_job needs at least one field")
        return self._change(job_id, fields, () if expected_state is None else (expected_state,))

    def request_cancel(self, job_id: str) -> bool:
        requested = {"cancel_requested": True, "cancel_requested_at": time.time()}
        if self._change(job_id, requested, (JOB_QUEUED, JOB_RUNNING)):
            return True
        return self.table.get(KIND_JOB, job_id) is not None

    def remove_job(self, job_id: str) -> None:
        self.table.delete(KIND_JOB, job_id)
