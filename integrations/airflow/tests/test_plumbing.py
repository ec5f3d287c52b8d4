"""The pieces Airflow loads on its own: the provider entry point and the trigger."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

from meadow_airflow.hosts import host_from_spec, host_to_spec
from meadow_airflow.triggers import MeadowJobTrigger

from meadow_core import LocalHost


def test_provider_entry_point_registers_task_meadow() -> None:
    import airflow
    import jsonschema

    (entry_point,) = [
        e
        for e in importlib.metadata.entry_points(group="apache_airflow_provider")
        if e.value.startswith("meadow_airflow")
    ]
    info = entry_point.load()()
    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    jsonschema.validate(info, json.loads(schema_path.read_text()))
    assert info["package-name"] == "meadow-airflow"

    from airflow.sdk import task

    assert task.meadow.__module__ == "meadow_airflow.decorators"


def test_trigger_survives_serialization_with_its_host() -> None:
    home = os.environ["MEADOW_HOME"]
    trigger = MeadowJobTrigger(job_id="job-abc", host=host_to_spec(LocalHost()))
    classpath, kwargs = trigger.serialize()
    assert classpath == "meadow_airflow.triggers.MeadowJobTrigger"
    json.dumps(kwargs)  # trigger kwargs must be plain data
    rebuilt = host_from_spec(kwargs["host"])
    assert isinstance(rebuilt, LocalHost)
    assert str(rebuilt.place.home) == str(Path(home))
