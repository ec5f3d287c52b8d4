"""Meadow for Prefect 3: ``MeadowTaskRunner`` runs a flow's task bodies on Meadow hosts.

Prefect's task engine stays in the flow process (states, retries, caching, results and
events never depend on the remote machine reaching the Prefect API); only the task's
function call travels through Meadow. Attributes load lazily so the remote side can
import ``meadow_prefect._remote`` without importing Prefect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meadow_prefect.task_runner import (
        MeadowFuture,
        MeadowTaskRunner,
        meadow_options,
    )

__all__ = ["MeadowFuture", "MeadowTaskRunner", "meadow_options"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from meadow_prefect import task_runner

        return getattr(task_runner, name)
    raise AttributeError(f"module 'meadow_prefect' has no attribute {name!r}")
