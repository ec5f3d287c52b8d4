"""The names a Meadowrun user imports exist in ``meadow_core`` and fit together as
Meadowrun's do (``from meadowrun import ...`` becomes ``from meadow_core import ...``)."""

from __future__ import annotations

import asyncio
import os
import sys

import meadow_core
from meadow_core import (
    AllocEC2Instance,
    Deployment,
    Host,
    InterpreterSpecFile,
    LocalHost,
    LocalInterpreter,
    run_function,
)

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_meadowruns_names_are_exported_with_meadowruns_hierarchy() -> None:
    from meadow_core import (
        MACHINE_CACHE_FOLDER,
        AllocVM,
        ContainerAtDigestInterpreter,
        ContainerInterpreter,
        ContainerInterpreterBase,
        LocalCurrentInterpreter,
        PipRequirementsString,
    )

    for name in (
        "ContainerInterpreter",
        "ContainerAtDigestInterpreter",
        "ContainerInterpreterBase",
        "MACHINE_CACHE_FOLDER",
        "PipRequirementsString",
        "LocalCurrentInterpreter",
        "AllocVM",
    ):
        assert name in meadow_core.__all__
    assert issubclass(ContainerInterpreter, ContainerInterpreterBase)
    assert issubclass(ContainerAtDigestInterpreter, ContainerInterpreterBase)
    assert issubclass(AllocEC2Instance, AllocVM) and issubclass(AllocVM, Host)
    assert issubclass(LocalCurrentInterpreter, LocalInterpreter)
    assert issubclass(PipRequirementsString, InterpreterSpecFile)
    assert os.path.isabs(MACHINE_CACHE_FOLDER) and os.path.isdir(MACHINE_CACHE_FOLDER)


def test_pip_requirements_string_builds_an_environment(host: LocalHost) -> None:
    """Meadowrun's ``PipRequirementsString(packages_to_install, python_version)``."""
    from meadow_core import PipRequirementsString

    interpreter = PipRequirementsString(["six==1.16.0"], HERE)
    assert interpreter.environment_spec().requirements == "six==1.16.0\n"
    assert PipRequirementsString("six==1.16.0\n").environment_spec() == (
        interpreter.environment_spec()
    )

    def six_version() -> str:
        import importlib

        return str(importlib.import_module("six").__version__)

    async def main() -> str:
        deployment = Deployment.mirror_local(interpreter=interpreter)
        return str(await run_function(six_version, host, None, deployment))

    assert asyncio.run(main()) == "1.16.0"


def test_local_current_interpreter_is_mirror_locals_default(host: LocalHost) -> None:
    from meadow_core import LocalCurrentInterpreter

    async def main() -> None:
        explicit = await Deployment.mirror_local(interpreter=LocalCurrentInterpreter())
        assert explicit == await Deployment.mirror_local()
        assert await run_function(lambda: 6 * 7, host, None, explicit) == 42

    asyncio.run(main())
