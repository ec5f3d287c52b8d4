"""What a cloud's emulation gives the VM simulator, and what it hears back.

The simulator (`vm.simulator.Simulator`) names no cloud. An emulation (EC2 on moto in
`meadow_devcloud.ec2`; Azure on Azurite and an ARM fake, later) implements
`InstanceSource`: which instances exist and in what state, what to boot for one, and
how the cloud's API ends one when the simulator says its time is up. For each VM it
boots, the simulator asks the `BootSpec`'s `metadata` factory for the VM's metadata
service at 169.254.169.254:80.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class InstanceState(enum.Enum):
    """An instance's state as far as its VM is concerned."""

    STARTING = "starting"  # alive but not up yet: keep its VM if it has one, boot none
    RUNNING = "running"  # up: boot a VM unless it has (or had) one
    STOPPED = "stopped"  # no VM; once it runs again it gets a fresh one
    ENDED = "ended"  # no VM, ever again (an instance not listed at all has ended too)


class MetadataServer(Protocol):
    """A VM's metadata service, serving on a listener the simulator bound inside the VM."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: Makes a VM's metadata service from the listener (169.254.169.254:80 inside the VM)
#: and the VM's directory on the host (for notice files the service reads and its log).
MetadataFactory = Callable[[socket.socket, Path], MetadataServer]


@dataclass(frozen=True)
class BootSpec:
    """What to boot for one instance."""

    user_data: bytes  # run as root at boot if it starts with #!, as cloud-init would
    hostname: str
    env: Mapping[str, str]  # the cloud's settings for the user data, on top of a fresh login's
    metadata: MetadataFactory
    # Extra fields for the VM's record (vm.json), e.g. the region, for `status` and tools.
    details: Mapping[str, str] = field(default_factory=dict)


class InstanceSource(Protocol):
    """A cloud emulation as the simulator sees it. Called from the simulator's poller
    thread only, one call at a time; any of these may raise (the round is retried, or
    the boot is recorded as failed)."""

    def instances(self) -> Mapping[str, InstanceState]:
        """One look at the cloud: the instances the simulator should mirror, by id."""
        ...

    def vm_name(self, instance_id: str) -> str:
        """A short name for the instance's VM, unique in this cloud, usable in a file
        name; its network namespace is `<the dev cloud's prefix><vm_name>`."""
        ...

    def boot_spec(self, instance_id: str) -> BootSpec:
        """What to boot for an instance `instances()` just reported RUNNING."""
        ...

    def terminate(self, instance_id: str) -> None:
        """The simulator ends the instance (an announced interruption fell due): make
        the cloud's API say so, as the real cloud would. The VM goes when the next
        `instances()` no longer reports it alive."""
        ...
