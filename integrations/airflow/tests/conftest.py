"""Real Airflow on a throwaway AIRFLOW_HOME (SQLite), real Meadow LocalHost on a tmp home.

The environment is set here, at import, because Airflow reads its configuration when it
is first imported. ``airflow db migrate`` runs once per session (about 5 s).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DAGS = Path(__file__).parent / "dags"
_ROOT = Path(tempfile.mkdtemp(prefix="meadow-airflow-tests-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_ROOT / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "MEADOW_HOME": str(_ROOT / "meadow"),
        "MEADOW_AIRFLOW_TEST_MARKERS": str(_ROOT / "markers"),
        "AIRFLOW_CONN_MEADOW_TEST_AWS": '{"conn_type": "aws"}',
        # AWS hosts get credentials from connections only: nothing from this machine.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(_ROOT / "no-aws-credentials"),
        "AWS_CONFIG_FILE": str(_ROOT / "no-aws-config"),
        "MEADOW_AWS_CATALOG": "snapshot",
    }
)
for _name in [
    n
    for n in os.environ
    if n.startswith("AWS_")
    and n
    not in os.environ.get(
        "MEADOW_KEEP_AWS_VARIABLES",
        "AWS_EC2_METADATA_DISABLED AWS_SHARED_CREDENTIALS_FILE AWS_CONFIG_FILE",
    ).split()
]:
    del os.environ[_name]
(_ROOT / "markers").mkdir(parents=True)

# Airflow binds its log handlers to the stdout of the moment it configures logging; under
# pytest that stream is closed after the first test. Give it a file that lives as long as
# the session, and read each run's log from there.
_CONSOLE = open(_ROOT / "console.log", "a+", buffering=1)  # noqa: SIM115
with contextlib.redirect_stdout(_CONSOLE), contextlib.redirect_stderr(_CONSOLE):
    import airflow.sdk  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Iterator[None]:
    """Migrate the metadata DB once; stop the Meadow agent and remove the homes at the end."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        timeout=180,
    )
    yield
    from meadow_core import LocalHost

    LocalHost(home=os.environ["MEADOW_HOME"]).shutdown()
    _CONSOLE.close()
    shutil.rmtree(_ROOT, ignore_errors=True)


def load_dag(name: str) -> Any:
    """Import a test DAG file the way a user script would and return its ``DAG``."""
    spec = importlib.util.spec_from_file_location(f"meadow_test_dag_{name}", DAGS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DAG


@dataclass
class Run:
    """What a user sees after ``dag.test()``: states, XCom values and the printed log."""

    state: str
    run_id: str
    states: dict[tuple[str, int], str]
    tries: dict[tuple[str, int], int]
    xcom: dict[tuple[str, int], Any]
    log: str

    def task_log(self, task_id: str) -> str:
        """The log lines between this task's [DAG TEST] start and end markers."""
        out: list[str] = []
        inside = False
        for line in self.log.splitlines():
            if f"[DAG TEST] starting task_id={task_id} " in line:
                inside = True
            if inside:
                out.append(line)
            if f"[DAG TEST] end task task_id={task_id} " in line:
                inside = False
        return "\n".join(out)


def run_dag(dag: Any, **kwargs: Any) -> Run:
    """``dag.test()`` and what it left behind: states, try numbers, XComs, the log."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    start = _CONSOLE.seek(0, os.SEEK_END)
    with contextlib.redirect_stdout(_CONSOLE), contextlib.redirect_stderr(_CONSOLE):
        dr = dag.test(**kwargs)
    _CONSOLE.flush()
    _CONSOLE.seek(start)
    log = _CONSOLE.read()
    sys.stdout.write(log[-30000:])  # pytest shows it if the test fails
    states: dict[tuple[str, int], str] = {}
    tries: dict[tuple[str, int], int] = {}
    for ti in dr.get_task_instances():
        states[(ti.task_id, ti.map_index)] = str(getattr(ti.state, "value", ti.state))
        tries[(ti.task_id, ti.map_index)] = ti.try_number
    xcom: dict[tuple[str, int], Any] = {}
    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter_by(dag_id=dag.dag_id, run_id=dr.run_id, key="return_value")
            .all()
        )
        for row in rows:
            xcom[(row.task_id, row.map_index)] = XComModel.deserialize_value(row)
    return Run(str(getattr(dr.state, "value", dr.state)), dr.run_id, states, tries, xcom, log)
