"""Run code from a git repository on Meadow.

EXAMPLE ONLY, not a test (the repository URL is a placeholder). The code comes from the
repository at one commit, the environment from its requirements file, and the task runs
a module of the repository as a command, so the Airflow worker needs none of that code
installed. ``Deployment.git_repo`` fetches when it is called, which here is every time
the DAG file is parsed; the fetch is incremental, but keep that in mind for large
repositories.
"""

from __future__ import annotations

from airflow.sdk import dag
from meadow_airflow import MeadowOperator

from meadow_core import Deployment, LocalHost, PipRequirementsFile, Resources


@dag(dag_id="meadow_example_git_repo", schedule="@daily", tags=["meadow", "example"])
def meadow_example_git_repo() -> None:
    MeadowOperator(
        task_id="train",
        command=["python", "-m", "mypackage.train", "--date", "{{ ds }}"],
        host=LocalHost(),
        resources=Resources(logical_cpu=4, memory_gb=8),
        deployment=Deployment.git_repo(
            "https://github.com/example/ml-pipelines",
            branch="main",
            path_to_source="src",
            interpreter=PipRequirementsFile("requirements.txt"),
        ),
        deferrable=True,
    )


DAG = meadow_example_git_repo()
