"""Meadow for Airflow 3: ``MeadowOperator``, ``@task.meadow`` and ``MeadowJobTrigger``.

Names are imported lazily so that Airflow's providers manager can read
``meadow_airflow.provider_info`` without importing the task SDK through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MeadowOperator": "meadow_airflow.operators",
    "MeadowRemoteError": "meadow_airflow.operators",
    "MeadowJobTrigger": "meadow_airflow.triggers",
    "meadow_task": "meadow_airflow.decorators",
    "resolve_meadow_results": "meadow_airflow.references",
    "get_provider_info": "meadow_airflow.provider_info",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'meadow_airflow' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
