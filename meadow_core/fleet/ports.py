"""What a VM cloud's driver implements for the fleet layer: launching and ending
machines, and (on the machine) reading its own identity and interruption notices."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from meadow_core.allocation.selection import Offer


@dataclasses.dataclass(frozen=True)
class Launched:
    """A machine the cloud accepted: its id and where it runs."""

    machine_id: str
    zone: str = ""


class Compute(Protocol):
    """Launches and terminates the cloud's VMs (EC2, Azure ARM)."""

    def launch(self, offer: Offer, count: int, boot_script: str, job_id: str) -> list[Launched]:
        """Launch ``count`` machines of ``offer`` (spot if it says so), tagged as
        Meadow's and for ``job_id``, each running ``boot_script`` at boot, with no
        inbound access. Raises on failure; ``is_capacity_error`` tells whether
        another choice may still work."""

    def terminate(self, machine_ids: Sequence[str]) -> None: ...

    def is_capacity_error(self, exc: BaseException) -> bool:
        """The cloud has no room for this choice now (capacity, quota, spot price)."""


class MachineMetadata(Protocol):
    """A machine's view of itself (EC2 IMDS, Azure IMDS and Scheduled Events)."""

    def machine_id(self) -> str: ...

    def interruption_notice(self) -> str | None:
        """A description of a coming eviction (spot reclaim), or None."""

    def terminate_self(self) -> None:
        """End this machine (called when its agent ends, for whatever reason)."""
