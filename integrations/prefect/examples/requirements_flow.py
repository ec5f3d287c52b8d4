"""A flow whose tasks run in an environment built from ``requirements.txt``.

Meadow builds the environment once per hash of the requirements with uv, packs it into
its object store and caches it on each machine; the flow process itself needs only
Prefect and Meadow. The first run builds (numpy: some seconds), later runs reuse it.

    .venvs/prefect/bin/python integrations/prefect/examples/requirements_flow.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from meadow_prefect import MeadowTaskRunner
from prefect import flow, task

from meadow_core import Deployment, LocalHost, PipRequirementsFile

REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def deployment_from_requirements() -> Deployment:
    """Run the tasks in an environment built from ``requirements.txt``."""
    return asyncio.run(Deployment.mirror_local(interpreter=PipRequirementsFile(str(REQUIREMENTS))))


@task
def versions() -> str:
    import sys

    try:
        import numpy

        return f"python {sys.version.split()[0]}, numpy {numpy.__version__}"
    except ImportError:
        return f"python {sys.version.split()[0]}, numpy not installed here"


def main() -> None:
    host = LocalHost()

    @flow(task_runner=MeadowTaskRunner(host=host, deployment=deployment_from_requirements()))
    def report() -> str:
        return versions.submit().result()

    try:
        print(report())
    finally:
        host.shutdown()


if __name__ == "__main__":
    main()
