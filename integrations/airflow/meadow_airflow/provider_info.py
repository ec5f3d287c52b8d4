"""What Airflow's providers manager reads through the ``apache_airflow_provider`` entry point.

Kept free of imports so that Airflow can read it while it is still starting up.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    """Register ``@task.meadow``; ``package-name`` must equal the distribution that
    declares the entry point (``meadow-airflow``)."""
    return {
        "package-name": "meadow-airflow",
        "name": "Meadow",
        "description": "Run Airflow tasks on machines Meadow provisions (this one, or a cloud's).",
        "task-decorators": [
            {"name": "meadow", "class-name": "meadow_airflow.decorators.meadow_task"},
        ],
    }
