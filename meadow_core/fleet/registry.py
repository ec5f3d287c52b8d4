"""``InstanceRegistry``: a fleet's machines, their free capacity and who holds it.

Every write that hands out or takes back capacity is atomic against the table: any
number of callers allocating at once never double-book a machine, and an idle
machine's agent and an allocating caller can never both win (the agent marks the
machine ``terminating`` only while it holds nothing, and nothing is allocated on a
machine that is not ``running``). ``VersionedInstanceRegistry`` gets that from
compare-and-swap over any ``VersionedTable``; a driver may override a method with one
conditional write (DynamoDB does for all of them).
"""

from __future__ import annotations

import abc
import builtins
import dataclasses
import time
from collections.abc import Mapping
from typing import Any, TypedDict

from meadow_core.allocation.selection import Offer, WarmInstance
from meadow_core.remote.ports import VersionedTable
from meadow_core.resources import Resources

RUNNING = "running"
TERMINATING = "terminating"
KIND_INSTANCE = "instance"
_CAS_ATTEMPTS = 20


class Allocation(TypedDict):
    """What one job holds on one machine: ``workers`` slots of the per-worker amounts."""

    workers: int
    logical_cpu: float
    memory_gb: float
    gpus: float


@dataclasses.dataclass
class InstanceRecord:
    """One Meadow machine: its size, price, what is free and who holds the rest.

    The ``free_*`` fields default to the totals (a new machine holds nothing).
    """

    instance_id: str
    instance_type: str
    spot: bool
    price_per_hour: float
    logical_cpu: float
    memory_gb: float
    gpus: float = 0.0
    gpu_memory_gb: float = 0.0
    flags: tuple[str, ...] = ()
    eviction_rate: float = 0.0
    architecture: str = "x86_64"
    zone: str = ""
    state: str = RUNNING
    launched_at: float = dataclasses.field(default_factory=time.time)
    last_activity: float = dataclasses.field(default_factory=time.time)
    last_heartbeat: float = dataclasses.field(default_factory=time.time)
    terminating_since: float | None = None
    free_logical_cpu: float | None = None
    free_memory_gb: float | None = None
    free_gpus: float | None = None
    version: int = 0
    allocations: dict[str, Allocation] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.free_logical_cpu is None:
            self.free_logical_cpu = self.logical_cpu
        if self.free_memory_gb is None:
            self.free_memory_gb = self.memory_gb
        if self.free_gpus is None:
            self.free_gpus = self.gpus

    @classmethod
    def launched(cls, instance_id: str, offer: Offer, zone: str) -> InstanceRecord:
        """The record of a machine just launched for ``offer`` (nothing allocated)."""
        return cls(
            instance_id=instance_id,
            instance_type=offer.instance_type,
            spot=offer.spot,
            price_per_hour=offer.price_per_hour,
            logical_cpu=offer.logical_cpu,
            memory_gb=offer.memory_gb,
            gpus=offer.gpus,
            gpu_memory_gb=offer.gpu_memory_gb,
            flags=tuple(sorted(offer.flags)),
            eviction_rate=offer.eviction_rate,
            architecture=offer.architecture,
            zone=zone,
        )

    @property
    def accepts_work(self) -> bool:
        """Only a ``running`` machine may be allocated (the registry enforces it too)."""
        return self.state == RUNNING

    def as_warm(self) -> WarmInstance:
        """What is free on this machine, as selection sees a warm one."""
        return WarmInstance(
            instance_id=self.instance_id,
            instance_type=self.instance_type,
            logical_cpu=float(self.free_logical_cpu or 0),
            memory_gb=float(self.free_memory_gb or 0),
            gpus=float(self.free_gpus or 0),
            gpu_memory_gb=self.gpu_memory_gb,
            flags=frozenset(self.flags),
            spot=self.spot,
            eviction_rate=self.eviction_rate,
            architecture=self.architecture,
        )

    def to_plain(self) -> dict[str, Any]:
        """The record as plain data, without its id (the table's key)."""
        data = dataclasses.asdict(self)
        data["flags"] = list(self.flags)
        del data["instance_id"]
        return data

    @classmethod
    def from_plain(cls, instance_id: str, data: Mapping[str, Any]) -> InstanceRecord:
        fields = {f.name for f in dataclasses.fields(cls)} - {"instance_id"}
        record = cls(instance_id=instance_id, **{k: v for k, v in data.items() if k in fields})
        record.spot = bool(record.spot)
        record.flags = tuple(record.flags)
        record.allocations = {
            job: Allocation(
                workers=int(a["workers"]),
                logical_cpu=float(a["logical_cpu"]),
                memory_gb=float(a["memory_gb"]),
                gpus=float(a["gpus"]),
            )
            for job, a in (data.get("allocations") or {}).items()
        }
        return record


def _exact(amount: float) -> float:
    """Free capacity without binary drift (0.1 CPU booked ten times frees exactly 1)."""
    return round(amount, 9)


def per_worker_amounts(per_worker: Resources) -> tuple[float, float, float]:
    """(cpu, memory, gpus) one worker books; ``None`` amounts count as 0."""
    return (
        float(per_worker.logical_cpu or 0),
        float(per_worker.memory_gb or 0),
        float(per_worker.effective_gpus),
    )


class InstanceRegistry(abc.ABC):
    """The fleet's machines. Every method is synchronous (called from threads)."""

    @abc.abstractmethod
    def register(self, record: InstanceRecord) -> bool:
        """Add a newly launched machine; False if one with this id is registered."""

    @abc.abstractmethod
    def get(self, instance_id: str) -> InstanceRecord | None: ...

    @abc.abstractmethod
    def list(self) -> builtins.list[InstanceRecord]: ...

    @abc.abstractmethod
    def remove(self, instance_id: str) -> None:
        """Forget a machine (it was terminated); a no-op if unknown."""

    @abc.abstractmethod
    def try_allocate(
        self, instance_id: str, job_id: str, workers: int, per_worker: Resources
    ) -> bool:
        """Take ``workers`` slots of ``per_worker`` on a running machine, or return False.

        Atomic: it succeeds only if the machine is ``running`` and its free CPU, memory
        and GPUs cover all the workers. ``None`` amounts count as 0: pass the amounts the
        host actually reserves. A job that already holds workers here with the same
        per-worker amounts gets more."""

    @abc.abstractmethod
    def release(self, instance_id: str, job_id: str, workers: int | None = None) -> bool:
        """Give back ``workers`` of a job's slots (all of them by default); False if
        the machine or the job's allocation is gone."""

    @abc.abstractmethod
    def heartbeat(self, instance_id: str) -> bool:
        """The machine's agent is alive; False if the record is gone."""

    @abc.abstractmethod
    def mark_terminating_if_idle(self, instance_id: str, idle_since: float | None = None) -> bool:
        """Mark the machine ``terminating`` if it holds no allocation (and, with
        ``idle_since``, saw none since); only then may its agent end it. False: a
        caller allocated meanwhile (or the record is gone), so keep serving."""

    @abc.abstractmethod
    def mark_terminating(self, instance_id: str) -> bool:
        """Stop all allocation on the machine whatever it holds (an interruption)."""


class VersionedInstanceRegistry(InstanceRegistry):
    """Machines in a ``VersionedTable``: each change reads, computes and
    compare-and-swaps, so a concurrent change makes it read again."""

    def __init__(self, table: VersionedTable) -> None:
        self.table = table

    def _read(self, instance_id: str) -> tuple[InstanceRecord, str] | None:
        found = self.table.get(KIND_INSTANCE, instance_id)
        return (
            None if found is None else (InstanceRecord.from_plain(instance_id, found[0]), found[1])
        )

    def _change(self, instance_id: str, change: Any) -> bool:
        """Apply ``change(record) -> bool`` (False: leave it) with compare-and-swap."""
        for _ in range(_CAS_ATTEMPTS):
            found = self._read(instance_id)
            if found is None:
                return False
            record, version = found
            if not change(record):
                return False
            record.version += 1
            if self.table.replace(KIND_INSTANCE, instance_id, record.to_plain(), version):
                return True
        raise RuntimeError(f"could not update {instance_id}: its record kept changing")

    def register(self, record: InstanceRecord) -> bool:
        return self.table.insert(KIND_INSTANCE, record.instance_id, record.to_plain())

    def get(self, instance_id: str) -> InstanceRecord | None:
        found = self._read(instance_id)
        return None if found is None else found[0]

    def list(self) -> builtins.list[InstanceRecord]:
        return [
            InstanceRecord.from_plain(key, item) for key, item, _ in self.table.scan(KIND_INSTANCE)
        ]

    def remove(self, instance_id: str) -> None:
        self.table.delete(KIND_INSTANCE, instance_id)

    def try_allocate(
        self, instance_id: str, job_id: str, workers: int, per_worker: Resources
    ) -> bool:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        cpu, memory, gpus = per_worker_amounts(per_worker)

        def take(record: InstanceRecord) -> bool:
            held = record.allocations.get(job_id)
            fits = (
                record.accepts_work
                and (record.free_logical_cpu or 0) >= cpu * workers
                and (record.free_memory_gb or 0) >= memory * workers
                and (record.free_gpus or 0) >= gpus * workers
            )
            if not fits:
                return False
            if held is not None and (held["logical_cpu"], held["memory_gb"], held["gpus"]) != (
                cpu,
                memory,
                gpus,
            ):
                return False
            record.free_logical_cpu = _exact((record.free_logical_cpu or 0) - cpu * workers)
            record.free_memory_gb = _exact((record.free_memory_gb or 0) - memory * workers)
            record.free_gpus = _exact((record.free_gpus or 0) - gpus * workers)
            record.last_activity = time.time()
            record.allocations[job_id] = Allocation(
                workers=workers + (held["workers"] if held else 0),
                logical_cpu=cpu,
                memory_gb=memory,
                gpus=gpus,
            )
            return True

        return self._change(instance_id, take)

    def release(self, instance_id: str, job_id: str, workers: int | None = None) -> bool:
        def give_back(record: InstanceRecord) -> bool:
            held = record.allocations.get(job_id)
            if held is None:
                return False
            count = held["workers"] if workers is None else min(workers, held["workers"])
            record.free_logical_cpu = _exact(
                (record.free_logical_cpu or 0) + held["logical_cpu"] * count
            )
            record.free_memory_gb = _exact((record.free_memory_gb or 0) + held["memory_gb"] * count)
            record.free_gpus = _exact((record.free_gpus or 0) + held["gpus"] * count)
            record.last_activity = time.time()
            if count >= held["workers"]:
                del record.allocations[job_id]
            else:
                held["workers"] -= count
            return True

        return self._change(instance_id, give_back)

    def heartbeat(self, instance_id: str) -> bool:
        def beat(record: InstanceRecord) -> bool:
            record.last_heartbeat = time.time()
            return True

        return self._change(instance_id, beat)

    def mark_terminating_if_idle(self, instance_id: str, idle_since: float | None = None) -> bool:
        def end(record: InstanceRecord) -> bool:
            if record.state != RUNNING or record.allocations:
                return False
            if idle_since is not None and record.last_activity > idle_since:
                return False
            record.state, record.terminating_since = TERMINATING, time.time()
            return True

        return self._change(instance_id, end)

    def mark_terminating(self, instance_id: str) -> bool:
        def end(record: InstanceRecord) -> bool:
            if record.state != RUNNING:
                return False
            record.state, record.terminating_since = TERMINATING, time.time()
            return True

        return self._change(instance_id, end)
