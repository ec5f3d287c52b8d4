"""What this machine can run at once, and the bookkeeping of what is reserved."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import psutil

from meadow_core.errors import UnsatisfiableResourcesError
from meadow_core.resources import DEFAULT_TASK_CPU as DEFAULT_TASK_CPU  # clouds.aws uses it
from meadow_core.resources import Resources


def _cpu_flags() -> frozenset[str]:
    """CPU vendor and feature flags, so ``flags_required`` can be checked here."""
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags":
            flags.update(value.split())
        elif key == "vendor_id":
            vendor = value.strip().lower()
            flags.add("intel" if "intel" in vendor else "amd" if "amd" in vendor else vendor)
    return frozenset(flags)


@dataclasses.dataclass(frozen=True)
class Capacity:
    """The resources one machine offers to Meadow tasks."""

    logical_cpu: float
    memory_gb: float
    gpus: float = 0.0
    flags: frozenset[str] = frozenset()

    @classmethod
    def of_this_machine(
        cls, logical_cpu: float | None = None, memory_gb: float | None = None
    ) -> Capacity:
        return cls(
            logical_cpu=logical_cpu or float(os.cpu_count() or 1),
            memory_gb=memory_gb or psutil.virtual_memory().total / 2**30,
            flags=_cpu_flags(),
        )

    def describe(self) -> str:
        return (
            f"{self.logical_cpu:g} logical CPUs, {self.memory_gb:.1f} GB memory, {self.gpus:g} GPUs"
        )

    def check(self, resources: Resources, scratch: Path | None = None) -> None:
        """Raise ``UnsatisfiableResourcesError`` naming what this machine has."""
        problems = []
        cpu = resources.logical_cpu or DEFAULT_TASK_CPU
        if cpu > self.logical_cpu:
            problems.append(f"logical_cpu={cpu:g} but this machine has {self.logical_cpu:g}")
        if resources.memory_gb is not None and resources.memory_gb > self.memory_gb:
            problems.append(
                f"memory_gb={resources.memory_gb:g} but this machine has {self.memory_gb:.1f} GB"
            )
        if resources.effective_gpus > self.gpus:
            problems.append(f"gpus={resources.effective_gpus:g} but this machine has {self.gpus:g}")
        missing = [f for f in resources.flags if f.lower() not in self.flags]
        if missing:
            problems.append(f"flags_required={missing} are not flags of this machine's CPU")
        if resources.ephemeral_storage is not None and scratch is not None:
            free_gb = shutil.disk_usage(scratch).free / 2**30
            if resources.ephemeral_storage > free_gb:
                problems.append(
                    f"ephemeral_storage={resources.ephemeral_storage:g} but only "
                    f"{free_gb:.1f} GB are free"
                )
        if problems:
            raise UnsatisfiableResourcesError(
                "LocalHost cannot satisfy these Resources: "
                + "; ".join(problems)
                + f". This machine has {self.describe()}; ask for less or use a cloud host."
            )


@dataclasses.dataclass
class Reservations:
    """CPU and memory reserved by running tasks; tasks beyond capacity wait."""

    capacity: Capacity
    cpu: float = 0.0
    memory_gb: float = 0.0

    def fits(self, cpu: float, memory_gb: float) -> bool:
        eps = 1e-9
        return (
            self.cpu + cpu <= self.capacity.logical_cpu + eps
            and self.memory_gb + memory_gb <= self.capacity.memory_gb + eps
        )

    def take(self, cpu: float, memory_gb: float) -> None:
        self.cpu += cpu
        self.memory_gb += memory_gb

    def give_back(self, cpu: float, memory_gb: float) -> None:
        self.cpu = max(0.0, self.cpu - cpu)
        self.memory_gb = max(0.0, self.memory_gb - memory_gb)
