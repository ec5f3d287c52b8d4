"""The one rule for whether a task attempt earns another, and with how much memory.

The local agent applies it when it records an outcome, and the remote relay when it
reports one, so a task is retried the same way wherever it runs (and even when no
caller is watching).
"""

from __future__ import annotations

import dataclasses

from meadow_core import protocol
from meadow_core.protocol import ErrorKind, JobSpec, TaskMessage, TaskOutcome

#: An attempt that used this share of its memory limit counts as memory-bound.
MEMORY_BOUND_FRACTION = 0.95
#: Outcomes another attempt may improve on.
RETRYABLE = (protocol.FAILED, protocol.CRASHED, protocol.TIMEOUT)
#: Error kinds no other attempt can fix.
FINAL_KINDS = (ErrorKind.UNSATISFIABLE_RESOURCES,)


def next_attempt(
    spec: JobSpec,
    task: TaskMessage,
    outcome: TaskOutcome,
    peak_memory_gb: float | None,
    memory_limit_gb: float | None = None,
) -> TaskMessage | None:
    """The task's next attempt if ``outcome`` earns one, else None.

    With ``retry_with_more_memory``, an attempt that hit its memory limit or used at
    least ``MEMORY_BOUND_FRACTION`` of it (``memory_limit_gb``, else the attempt's or
    the job's amount) is retried with the job's memory times the attempt number.
    ``peak_memory_gb`` None means the peak is unknown: the memory stays as it was.
    """
    if outcome.outcome not in RETRYABLE or task.attempt >= spec.max_attempts:
        return None
    kind = outcome.error[0] if outcome.error else None
    if kind in FINAL_KINDS:
        return None
    memory = task.memory_gb
    base = spec.resources.get("memory_gb")
    if spec.retry_with_more_memory and base and peak_memory_gb is not None:
        limit = memory_limit_gb or task.memory_gb or base
        memory_bound = kind == ErrorKind.MEMORY_LIMIT_EXCEEDED or bool(
            limit and peak_memory_gb >= MEMORY_BOUND_FRACTION * limit
        )
        if memory_bound:
            memory = float(base) * (task.attempt + 1)
    return dataclasses.replace(task, attempt=task.attempt + 1, memory_gb=memory)
