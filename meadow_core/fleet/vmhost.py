"""``AllocVM``: a remote host whose machines are VMs Meadow launches and reuses.

Workers go to warm machines with free capacity first (atomic writes in the registry,
so concurrent callers never double-book), then to the cheapest new machines from the
selection, with the next choice when a launch fails for capacity. While a caller
watches, it releases what dead machines held and tops the job's workers up, and ends
machines that stayed silent (killed, failed to boot). A cloud supplies the registry,
the catalog's offers, ``Compute`` and the boot script.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence

from meadow_core.allocation.selection import NoCapacityError, Offer, Plan, WarmInstance, select
from meadow_core.fleet.ports import Compute
from meadow_core.fleet.registry import InstanceRecord, InstanceRegistry
from meadow_core.protocol import JobSpec
from meadow_core.remote import messages
from meadow_core.remote.caller import RemoteHost
from meadow_core.remote.ports import QueueGone
from meadow_core.resources import DEFAULT_TASK_CPU, Resources

log = logging.getLogger("meadow.fleet")

#: A serving machine whose heartbeat is older than this is presumed dead.
HEARTBEAT_STALE_SECONDS = 30.0
#: A running machine silent this long is terminated by the caller that notices.
DEAD_SECONDS = 120.0
#: How long a launched machine may take to boot before its first heartbeat.
BOOT_GRACE_SECONDS = 240.0
#: How many times allocation plans again after losing warm machines to other callers.
REPLANS = 5


class LaunchError(RuntimeError):
    """No machine could be launched for any of the choices; says why for each."""


def booked_per_worker(spec: JobSpec) -> Resources:
    """What one worker of ``spec`` books on a machine (selection plans the same)."""
    resources = Resources.from_wire(dict(spec.resources))
    if resources.logical_cpu is None:
        resources = dataclasses.replace(resources, logical_cpu=DEFAULT_TASK_CPU)
    return resources


def alive(record: InstanceRecord, now: float) -> bool:
    """Running and heartbeating (or still booting): worth allocating to."""
    booting = (
        record.last_heartbeat - record.launched_at < 1.0
        and now - record.launched_at < BOOT_GRACE_SECONDS
    )
    fresh = now - record.last_heartbeat < HEARTBEAT_STALE_SECONDS
    return record.accepts_work and (fresh or booting)


class AllocVM(RemoteHost):
    """Warm-first allocation over a fleet of VMs; subclasses name the cloud."""

    # -- what a cloud provides ---------------------------------------------------------

    @property
    @abc.abstractmethod
    def registry(self) -> InstanceRegistry: ...

    @abc.abstractmethod
    def _offers(self) -> Sequence[Offer]:
        """The catalog's instance types and prices for this host's region."""

    @abc.abstractmethod
    def _where(self) -> str:
        """How messages name the place (``EC2 us-east-2``)."""

    @abc.abstractmethod
    def _compute(self) -> Compute:
        """The launcher, set up for this host (image, network) when it is needed."""

    @abc.abstractmethod
    def _boot_script(self) -> str:
        """What a new machine runs at boot (kept fresh by the subclass)."""

    # -- allocation ----------------------------------------------------------------------

    def _warm(self) -> list[WarmInstance]:
        now = time.time()
        return [r.as_warm() for r in self.registry.list() if alive(r, now)]

    def _allocate(self, spec: JobSpec, workers: int) -> None:
        """Place ``workers`` workers of ``spec`` on warm machines, then new ones."""
        resources = booked_per_worker(spec)
        offers = self._offers()
        remaining = workers
        where = self._where()
        for _ in range(REPLANS):
            plan = select(resources, remaining, offers, self._warm(), where=where)
            lost = 0
            for allocation in plan.warm:
                machine = allocation.instance.instance_id
                if self.registry.try_allocate(machine, spec.job_id, allocation.workers, resources):
                    self._serve(machine, spec.job_id, allocation.workers)
                else:
                    lost += allocation.workers  # another caller took it first: plan again
            if lost == 0:
                self._launch(spec, resources, plan)
                return
            remaining = lost + sum(launch.workers for launch in plan.launches)
        self._launch(spec, resources, select(resources, remaining, offers, where=where))

    def _launch(self, spec: JobSpec, resources: Resources, plan: Plan) -> None:
        if not plan.launches:
            return
        compute = self._compute()
        boot_script = self._boot_script()
        failures: list[str] = []
        index = 0
        while index < len(plan.launches):
            choice = plan.launches[index]
            offer = choice.offer
            try:
                launched = compute.launch(offer, choice.count, boot_script, spec.job_id)
            except Exception as exc:
                if not compute.is_capacity_error(exc):
                    raise
                failures.append(f"{offer.describe()}: {exc}")
                log.warning(
                    "could not launch %s, trying the next choice: %s", offer.instance_type, exc
                )
                try:
                    # The replacements are appended; carry on at the same index.
                    plan = plan.without(offer.instance_type, spot=offer.spot)
                except NoCapacityError as none_left:
                    raise LaunchError(f"{none_left} ({'; '.join(failures)})") from exc
                continue
            unplaced = choice.workers
            for machine in launched:
                workers = min(choice.workers_per_instance, unplaced)
                unplaced -= workers
                self.registry.register(
                    InstanceRecord.launched(machine.machine_id, offer, machine.zone)
                )
                self.place.queue.create(
                    messages.control_queue(machine.machine_id), messages.TASK_VISIBILITY_SECONDS
                )
                if workers and self.registry.try_allocate(
                    machine.machine_id, spec.job_id, workers, resources
                ):
                    self._serve(machine.machine_id, spec.job_id, workers)
            index += 1

    def _ring(self, machine_id: str, body: bytes) -> None:
        """Send a control message; a machine that is ending has no control queue (its
        allocation goes stale and is replaced)."""
        with contextlib.suppress(QueueGone):
            self.place.queue.send(messages.control_queue(machine_id), [body])

    def _serve(self, machine_id: str, job_id: str, workers: int) -> None:
        """Ring the machine's doorbell: it reads its allocations from the registry."""
        self.cache.served.setdefault(job_id, set()).add(machine_id)
        self._ring(machine_id, messages.serve_body(job_id, workers))

    def _supervise(self, spec: JobSpec, remaining: int) -> None:
        """Top up a job whose serving machines died or were interrupted."""
        now = time.time()
        live = 0
        for record in self.registry.list():
            allocation = record.allocations.get(spec.job_id)
            if allocation is None:
                continue
            if alive(record, now):
                live += int(allocation["workers"])
            else:
                self.registry.release(record.instance_id, spec.job_id)
                self._retire_if_dead(record, now)
        wanted = min(remaining, spec.num_concurrent_tasks or remaining)
        if live < wanted:
            log.info("job %s has %d live workers of %d; allocating more", spec.job_id, live, wanted)
            self._before_submit()
            self._allocate(spec, wanted - live)

    def _retire_if_dead(self, record: InstanceRecord, now: float) -> None:
        """A machine silent for long (killed, failed to boot, agent crashed) is marked
        terminating, so nobody allocates to it, and terminated; it is Meadow's (tagged)."""
        if now - record.last_heartbeat < DEAD_SECONDS or record.state != "running":
            return
        log.warning(
            "machine %s has been silent for %.0fs; terminating it",
            record.instance_id,
            now - record.last_heartbeat,
        )
        if self.registry.mark_terminating(record.instance_id):
            self._compute().terminate([record.instance_id])

    def _holders(self, job_id: str, served: set[str] | None) -> set[str]:
        if served is not None:
            return served
        return {r.instance_id for r in self.registry.list() if job_id in r.allocations}

    def _end_job(self, job_id: str, served: set[str] | None) -> list[Callable[[], object]]:
        return [
            functools.partial(self.registry.release, machine, job_id)
            for machine in self._holders(job_id, served)
        ]

    def _notify_cancel(self, job_id: str) -> None:
        for machine in self._holders(job_id, None):
            self._ring(machine, messages.cancel_body(job_id))
