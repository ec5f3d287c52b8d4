"""Meadow: run functions, commands and maps on machines Meadow provisions itself.

The public API follows Meadowrun's: ``run_function``, ``run_command``, ``run_map`` and
``run_map_as_completed`` are coroutines; each has a ``*_sync`` twin for plain code.
``LocalHost`` (this machine) is the default host.
"""

from meadow_core.api import (
    JobHandle,
    cancel_job,
    cancel_job_sync,
    default_host,
    deterministic_job_id,
    get_job,
    get_job_sync,
    list_jobs,
    list_jobs_sync,
    read_task_log,
    read_task_log_sync,
    run_command,
    run_command_sync,
    run_function,
    run_function_sync,
    run_map,
    run_map_as_completed,
    run_map_as_completed_sync,
    run_map_sync,
    wait_for_job,
    wait_for_job_sync,
)
from meadow_core.deployment import Deployment
from meadow_core.errors import (
    AgentUnavailableError,
    InvalidRequestError,
    JobCancelledError,
    JobNotFoundError,
    MeadowError,
    SerializationError,
    UnsatisfiableResourcesError,
)
from meadow_core.hosts import Host, LocalHost
from meadow_core.interpreters import (
    MEADOW_INTERPRETER,
    CondaEnvironmentFile,
    InterpreterSpecFile,
    LocalCondaInterpreter,
    LocalInterpreter,
    LocalPipInterpreter,
    PipRequirementsFile,
    PoetryProjectPath,
    PreinstalledInterpreter,
    UvProjectPath,
)
from meadow_core.logs import route_logs
from meadow_core.protocol import ErrorKind, JobRecord, JobState, Outcome, RemoteError
from meadow_core.resources import Resources
from meadow_core.results import (
    JobCompletion,
    RunMapTasksFailedException,
    TaskException,
    TaskResult,
)
from meadow_core.secrets import AwsSecret, AzureSecret, EnvironmentSecret, FileSecret, Secret
from meadow_core.task_context import TaskContext, current_task

__version__ = "0.1.0"

__all__ = [
    "MEADOW_INTERPRETER",
    "AgentUnavailableError",
    "AwsSecret",
    "AzureSecret",
    "CondaEnvironmentFile",
    "Deployment",
    "EnvironmentSecret",
    "ErrorKind",
    "FileSecret",
    "Host",
    "InterpreterSpecFile",
    "InvalidRequestError",
    "JobCancelledError",
    "JobCompletion",
    "JobHandle",
    "JobNotFoundError",
    "JobRecord",
    "JobState",
    "LocalCondaInterpreter",
    "LocalHost",
    "LocalInterpreter",
    "LocalPipInterpreter",
    "MeadowError",
    "Outcome",
    "PipRequirementsFile",
    "PoetryProjectPath",
    "PreinstalledInterpreter",
    "RemoteError",
    "Resources",
    "RunMapTasksFailedException",
    "Secret",
    "SerializationError",
    "TaskContext",
    "TaskException",
    "TaskResult",
    "UnsatisfiableResourcesError",
    "UvProjectPath",
    "cancel_job",
    "cancel_job_sync",
    "current_task",
    "default_host",
    "deterministic_job_id",
    "get_job",
    "get_job_sync",
    "list_jobs",
    "list_jobs_sync",
    "read_task_log",
    "read_task_log_sync",
    "route_logs",
    "run_command",
    "run_command_sync",
    "run_function",
    "run_function_sync",
    "run_map",
    "run_map_as_completed",
    "run_map_as_completed_sync",
    "run_map_sync",
    "wait_for_job",
    "wait_for_job_sync",
]


def __getattr__(name: str) -> object:
    """Cloud hosts import their SDK only when used (``pip install meadow[aws]``)."""
    if name == "AllocEC2Instance":
        from meadow_core.clouds.aws.host import AllocEC2Instance

        return AllocEC2Instance
    raise AttributeError(f"module 'meadow_core' has no attribute {name!r}")
