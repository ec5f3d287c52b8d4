"""Meadow adapter for Dagster: run ops on Meadow hosts, share outputs, run Pipes scripts.

- ``meadow_executor``: each step runs on a Meadow host; its events come back through
  Meadow and land in the run's event log, so no database is shared with the machine.
- ``meadow_io_manager``: outputs in Meadow's object store, shared by all machines.
- ``MeadowCredentials``: the host's credentials as a resource the executor reads.
- ``PipesMeadowClient``: run an external script on a Meadow host with Dagster Pipes.
"""

from meadow_dagster.credentials import MeadowCredentials
from meadow_dagster.executor import (
    RESOURCES_TAG,
    MeadowDagsterConfigError,
    MeadowExecutor,
    MeadowUnmetRequirementsError,
    meadow_executor,
)
from meadow_dagster.io_manager import MeadowIOManager, meadow_io_manager
from meadow_dagster.pipes import PipesMeadowClient

__all__ = [
    "RESOURCES_TAG",
    "MeadowCredentials",
    "MeadowDagsterConfigError",
    "MeadowExecutor",
    "MeadowIOManager",
    "MeadowUnmetRequirementsError",
    "PipesMeadowClient",
    "meadow_executor",
    "meadow_io_manager",
]
