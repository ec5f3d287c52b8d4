"""`Resources`: what one job or one task of a map needs from a machine.

Validated on construction so a bad request fails in the caller, before any machine is
chosen or launched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

#: Below this a Python worker cannot even start with its imports.
MIN_MEMORY_GB = 0.05

#: CPUs a task asks for when its Resources leave ``logical_cpu`` unset.
DEFAULT_TASK_CPU = 1.0


def _positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Resources.{name} must be a number, got {type(value).__name__}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "greater than 0"
        raise ValueError(f"Resources.{name} must be {bound}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Resources:
    """Requirements of a job, or of each task of a map.

    ``logical_cpu`` and ``memory_gb`` are what the task may use; ``max_eviction_rate``
    is the spot interruption probability (percent) accepted, 0 meaning on-demand only;
    ``gpu_memory`` alone implies one GPU; ``flags_required`` are CPU or machine flags
    such as ``"avx512"`` or ``"nvidia"``; ``ephemeral_storage`` is local disk in GB.
    """

    logical_cpu: float | None = None
    memory_gb: float | None = None
    max_eviction_rate: float = 80.0
    gpus: float | None = None
    gpu_memory: float | None = None
    flags_required: str | Sequence[str] | None = None
    ephemeral_storage: float | None = None

    def __post_init__(self) -> None:
        _positive("logical_cpu", self.logical_cpu)
        if self.memory_gb is not None:
            _positive("memory_gb", self.memory_gb)
            if self.memory_gb < MIN_MEMORY_GB:
                raise ValueError(
                    f"Resources.memory_gb={self.memory_gb!r} is below the {MIN_MEMORY_GB} GB a "
                    "Python worker needs; ask for more memory"
                )
        if isinstance(self.max_eviction_rate, bool) or not isinstance(
            self.max_eviction_rate, int | float
        ):
            raise TypeError("Resources.max_eviction_rate must be a number between 0 and 100")
        if not 0 <= self.max_eviction_rate <= 100:
            raise ValueError(
                "Resources.max_eviction_rate is a percentage between 0 and 100 "
                f"(0 means on-demand only), got {self.max_eviction_rate!r}"
            )
        _positive("gpus", self.gpus, allow_zero=True)
        _positive("gpu_memory", self.gpu_memory)
        if self.gpu_memory is not None and self.gpus == 0:
            raise ValueError(
                "Resources.gpu_memory needs at least one GPU but Resources.gpus=0; "
                "drop gpu_memory or ask for gpus"
            )
        _positive("ephemeral_storage", self.ephemeral_storage)
        flags = self.flags_required
        if isinstance(flags, str):
            object.__setattr__(self, "flags_required", (flags,))
        elif flags is not None:
            flags = tuple(flags)
            if not all(isinstance(f, str) and f for f in flags):
                raise TypeError("Resources.flags_required must be a string or a list of strings")
            object.__setattr__(self, "flags_required", flags)

    @property
    def effective_gpus(self) -> float:
        """GPUs needed: ``gpu_memory`` alone implies one."""
        if self.gpus is not None:
            return self.gpus
        return 1.0 if self.gpu_memory is not None else 0.0

    @property
    def flags(self) -> tuple[str, ...]:
        """``flags_required`` normalised to a tuple."""
        flags = self.flags_required
        assert not isinstance(flags, str)
        return tuple(flags or ())

    def with_memory_multiplied(self, factor: float) -> Resources:
        """The same request with ``factor`` times the memory (``retry_with_more_memory``)."""
        if self.memory_gb is None:
            return self
        return dataclasses.replace(self, memory_gb=self.memory_gb * factor)

    def to_wire(self) -> dict[str, object]:
        """Plain data for the protocol."""
        data = dataclasses.asdict(self)
        data["flags_required"] = list(self.flags)
        return data

    @classmethod
    def from_wire(cls, data: dict[str, object]) -> Resources:
        return cls(**data)  # type: ignore[arg-type]
