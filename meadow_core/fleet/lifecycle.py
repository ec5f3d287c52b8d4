"""A fleet machine's life: serve what the registry allocates, heartbeat, end when idle
or interrupted, and never run on unseen.

``FleetMachine`` runs the remote layer's ``MachineRelay`` with the registry as its
``ServeSource``. It heartbeats into the registry; after ``idle_timeout`` without work it
marks itself terminating (an atomic write that loses against any concurrent
allocation) and ends its own machine, with no caller involved. It watches the
machine's metadata for an interruption notice: then it stops taking work, hands its
running tasks back so they run elsewhere, and ends. Whatever ends it, even a crash, the
machine is terminated (``run_machine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from meadow_core.fleet.ports import MachineMetadata
from meadow_core.fleet.registry import InstanceRegistry
from meadow_core.fleet.vmhost import booked_per_worker
from meadow_core.hosts.local import LocalHost
from meadow_core.protocol import JobSpec
from meadow_core.remote.caller import RemotePlace
from meadow_core.remote.relay import MachineRelay, background

log = logging.getLogger("meadow.machine")

HEARTBEAT_SECONDS = 5.0
INTERRUPTION_POLL_SECONDS = 1.0


class RegistryServeSource:
    """A fleet machine serves what the registry allocated to it."""

    def __init__(self, registry: InstanceRegistry, machine_id: str) -> None:
        self.registry = registry
        self.machine_id = machine_id

    def allocations(self) -> dict[str, int] | None:
        record = self.registry.get(self.machine_id)
        if record is None:
            return None
        return {job: int(a["workers"]) for job, a in record.allocations.items()}

    def release(self, job_id: str) -> None:
        self.registry.release(self.machine_id, job_id)

    def take_one(self, job_id: str, spec: JobSpec) -> bool:
        return self.registry.try_allocate(self.machine_id, job_id, 1, booked_per_worker(spec))


class FleetMachine:
    """Everything a fleet machine does; ``run`` returns when the machine is ending."""

    def __init__(
        self,
        metadata: MachineMetadata,
        place: RemotePlace,
        registry: InstanceRegistry,
        local: LocalHost,
        idle_timeout: float,
    ) -> None:
        self.metadata = metadata
        self.registry = registry
        self.machine_id = metadata.machine_id()
        self.relay = MachineRelay(
            self.machine_id,
            place,
            local,
            RegistryServeSource(registry, self.machine_id),
            idle_timeout,
        )
        self.idle_timeout = idle_timeout

    async def _heartbeat(self) -> None:
        relay = self.relay
        while True:
            if relay.busy:
                relay.last_busy = time.monotonic()
            try:
                known = await relay.call(self.registry.heartbeat, self.machine_id)
                if not known and not relay.busy:
                    # No record (the sweeper removed it, or the launching caller died
                    # before registering): nobody can allocate here, so end.
                    log.warning("%s is not in the registry: terminating", self.machine_id)
                    return
                await relay.reconcile()
                idle = time.monotonic() - relay.last_busy
                if not relay.busy and idle >= self.idle_timeout and not await relay.still_needed():
                    won = await relay.call(self.registry.mark_terminating_if_idle, self.machine_id)
                    if won:
                        log.info("idle for %.0fs: terminating %s", idle, self.machine_id)
                        return
                    relay.last_busy = time.monotonic()  # a caller allocated meanwhile
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(min(HEARTBEAT_SECONDS, max(0.5, self.idle_timeout / 4)))

    async def _watch_interruption(self) -> None:
        while True:
            await asyncio.sleep(INTERRUPTION_POLL_SECONDS)
            try:
                notice = await self.relay.call(self.metadata.interruption_notice)
            except Exception:
                continue
            if notice:
                log.warning("interruption notice: %s", notice)
                self.relay.interrupted = True
                with contextlib.suppress(Exception):
                    await self.relay.call(self.registry.mark_terminating, self.machine_id)
                await self.relay.interrupt()
                return

    async def run(self) -> None:
        log.info("meadow machine agent on %s", self.machine_id)
        control = background(self.relay.control(), "control queue")
        settler = background(self.relay.settler(HEARTBEAT_SECONDS), "settling jobs")
        done, _ = await asyncio.wait(
            [
                background(self._heartbeat(), "heartbeat"),
                background(self._watch_interruption(), "interruption watch"),
            ],
            return_when=asyncio.FIRST_COMPLETED,
        )
        control.cancel()
        settler.cancel()
        for task in done:
            task.result()
        await self.relay.close()
        with contextlib.suppress(Exception):
            await self.relay.call(self.registry.remove, self.machine_id)
        await self.relay.call(self.metadata.terminate_self)


def run_machine(make: Callable[[], FleetMachine], metadata: MachineMetadata) -> None:
    """Run a fleet machine to its end; whatever ends it (even a crash), the machine
    must not run on unseen."""
    try:
        asyncio.run(make().run())
    finally:
        try:
            metadata.terminate_self()
        except Exception:
            log.exception("could not terminate this machine")
