"""Meadow: run functions, commands and maps on machines Meadow provisions itself.

The public API follows Meadowrun's: ``run_function``, ``run_command``, ``run_map`` and
``run_map_as_completed`` are coroutines; each has a ``*_sync`` twin for plain code.
``LocalHost`` (this machine) is the default host.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meadow_core._runtime import __version__ as __version__
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
    from meadow_core.clouds.aws.host import AllocEC2Instance
    from meadow_core.container_interpreters import (
        ContainerAtDigestInterpreter,
        ContainerInterpreter,
        ContainerInterpreterBase,
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
    from meadow_core.fleet.vmhost import AllocVM
    from meadow_core.hosts import Host, LocalHost
    from meadow_core.hosts.config import (
        HostConfigError,
        HostSetting,
        host_class,
        host_from_config,
        host_from_string,
        host_to_config,
        host_types,
        register_host,
    )
    from meadow_core.interpreters import (
        MEADOW_INTERPRETER,
        CondaEnvironmentFile,
        InterpreterSpecFile,
        LocalCondaInterpreter,
        LocalCurrentInterpreter,
        LocalInterpreter,
        LocalPipInterpreter,
        PipRequirementsFile,
        PipRequirementsString,
        PoetryProjectPath,
        PreinstalledInterpreter,
        UvProjectPath,
    )
    from meadow_core.logs import route_logs
    from meadow_core.machine_cache import MACHINE_CACHE_FOLDER
    from meadow_core.protocol import ErrorKind, JobRecord, JobState, Outcome, RemoteError
    from meadow_core.resources import Resources
    from meadow_core.results import (
        JobCompletion,
        RunMapTasksFailedException,
        TaskException,
        TaskResult,
        TaskState,
    )
    from meadow_core.secrets import AwsSecret, AzureSecret, EnvironmentSecret, FileSecret, Secret
    from meadow_core.task_context import TaskContext, current_task

__all__ = [
    "MACHINE_CACHE_FOLDER",
    "MEADOW_INTERPRETER",
    "AgentUnavailableError",
    "AllocEC2Instance",
    "AllocVM",
    "AwsSecret",
    "AzureSecret",
    "CondaEnvironmentFile",
    "ContainerAtDigestInterpreter",
    "ContainerInterpreter",
    "ContainerInterpreterBase",
    "Deployment",
    "EnvironmentSecret",
    "ErrorKind",
    "FileSecret",
    "Host",
    "HostConfigError",
    "HostSetting",
    "InterpreterSpecFile",
    "InvalidRequestError",
    "JobCancelledError",
    "JobCompletion",
    "JobHandle",
    "JobNotFoundError",
    "JobRecord",
    "JobState",
    "LocalCondaInterpreter",
    "LocalCurrentInterpreter",
    "LocalHost",
    "LocalInterpreter",
    "LocalPipInterpreter",
    "MeadowError",
    "Outcome",
    "PipRequirementsFile",
    "PipRequirementsString",
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
    "TaskState",
    "UnsatisfiableResourcesError",
    "UvProjectPath",
    "cancel_job",
    "cancel_job_sync",
    "current_task",
    "default_host",
    "deterministic_job_id",
    "get_job",
    "get_job_sync",
    "host_class",
    "host_from_config",
    "host_from_string",
    "host_to_config",
    "host_types",
    "list_jobs",
    "list_jobs_sync",
    "read_task_log",
    "read_task_log_sync",
    "register_host",
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

#: Where each exported name is defined. Names are imported on first use, so importing a
#: submodule (the agent and its workers import ``protocol``, ``transport``, ``place``)
#: does not load the caller's API, and ``AllocEC2Instance`` loads boto3 only when used.
_SOURCES = {
    "meadow_core._runtime": ["__version__"],
    "meadow_core.api": [
        "JobHandle",
        "cancel_job",
        "cancel_job_sync",
        "default_host",
        "deterministic_job_id",
        "get_job",
        "get_job_sync",
        "list_jobs",
        "list_jobs_sync",
        "read_task_log",
        "read_task_log_sync",
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
    ],
    "meadow_core.clouds.aws.host": ["AllocEC2Instance"],
    "meadow_core.container_interpreters": [
        "ContainerAtDigestInterpreter",
        "ContainerInterpreter",
        "ContainerInterpreterBase",
    ],
    "meadow_core.deployment": ["Deployment"],
    "meadow_core.errors": [
        "AgentUnavailableError",
        "InvalidRequestError",
        "JobCancelledError",
        "JobNotFoundError",
        "MeadowError",
        "SerializationError",
        "UnsatisfiableResourcesError",
    ],
    "meadow_core.fleet.vmhost": ["AllocVM"],
    "meadow_core.hosts": ["Host", "LocalHost"],
    "meadow_core.hosts.config": [
        "HostConfigError",
        "HostSetting",
        "host_class",
        "host_from_config",
        "host_from_string",
        "host_to_config",
        "host_types",
        "register_host",
    ],
    "meadow_core.interpreters": [
        "MEADOW_INTERPRETER",
        "CondaEnvironmentFile",
        "InterpreterSpecFile",
        "LocalCondaInterpreter",
        "LocalCurrentInterpreter",
        "LocalInterpreter",
        "LocalPipInterpreter",
        "PipRequirementsFile",
        "PipRequirementsString",
        "PoetryProjectPath",
        "PreinstalledInterpreter",
        "UvProjectPath",
    ],
    "meadow_core.logs": ["route_logs"],
    "meadow_core.machine_cache": ["MACHINE_CACHE_FOLDER"],
    "meadow_core.protocol": ["ErrorKind", "JobRecord", "JobState", "Outcome", "RemoteError"],
    "meadow_core.resources": ["Resources"],
    "meadow_core.results": [
        "JobCompletion",
        "RunMapTasksFailedException",
        "TaskException",
        "TaskResult",
        "TaskState",
    ],
    "meadow_core.secrets": [
        "AwsSecret",
        "AzureSecret",
        "EnvironmentSecret",
        "FileSecret",
        "Secret",
    ],
    "meadow_core.task_context": ["TaskContext", "current_task"],
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all

    def __getattr__(name: str) -> Any:
        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
