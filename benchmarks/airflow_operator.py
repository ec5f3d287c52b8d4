"""MeadowOperator against PythonVirtualenvOperator and PythonOperator, under ``dag.test()``.

Three DAGs of ``--tasks`` small independent tasks each (the same function), run in one
process on a throwaway ``AIRFLOW_HOME`` (SQLite) and Meadow home:

- ``PythonOperator``: in the Airflow worker itself, the floor;
- ``PythonVirtualenvOperator`` with ``venv_cache_path``: a cached venv, a new interpreter
  per task (what users pick today for isolation);
- ``MeadowOperator`` on ``LocalHost``: a warm Meadow worker per task; the default
  (``durable=True``: two ``task_state_store`` calls per task so a retry can reattach),
  and ``durable=False`` to show what those calls cost.

Each DAG runs once untimed (builds the cached venv, starts the Meadow agent, warms the
in-process Execution API), then ``--repeats`` timed rounds run the DAGs in turn;
the median round is reported. Targets (issue 5), checked on the default Meadow row:
faster than the virtualenv operator and within 1.5x of PythonOperator. Run from the
repository root::

    .venvs/airflow/bin/python benchmarks/airflow_operator.py [--tasks 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_REPO = Path(__file__).resolve().parent.parent

_DAG_FILE = '''
"""Benchmark DAGs written by benchmarks/airflow_operator.py."""

from __future__ import annotations

import os

from airflow.providers.standard.operators.python import PythonOperator, PythonVirtualenvOperator
from airflow.sdk import DAG
from meadow_core import LocalHost

from meadow_airflow import MeadowOperator

N = int(os.environ["BENCH_TASKS"])


def small(i):
    """A small step: a little arithmetic (the virtualenv operator ships its source)."""
    return sum(range(1000 + i))


with DAG("bench_python", schedule=None) as bench_python:
    for i in range(N):
        PythonOperator(task_id=f"t{i}", python_callable=small, op_args=[i])

with DAG("bench_virtualenv", schedule=None) as bench_virtualenv:
    for i in range(N):
        PythonVirtualenvOperator(
            task_id=f"t{i}",
            python_callable=small,
            op_args=[i],
            requirements=[],
            venv_cache_path=os.environ["BENCH_VENV_CACHE"],
        )

with DAG("bench_meadow", schedule=None) as bench_meadow:
    for i in range(N):
        MeadowOperator(task_id=f"t{i}", python_callable=small, op_args=[i], host=LocalHost())

with DAG("bench_meadow_not_durable", schedule=None) as bench_meadow_not_durable:
    for i in range(N):
        MeadowOperator(
            task_id=f"t{i}", python_callable=small, op_args=[i], host=LocalHost(), durable=False
        )
'''

ROWS = [
    ("PythonOperator", "bench_python"),
    ("PythonVirtualenvOperator (cached venv)", "bench_virtualenv"),
    ("MeadowOperator (LocalHost)", "bench_meadow"),
    ("MeadowOperator (LocalHost, durable=False)", "bench_meadow_not_durable"),
]


def _commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "integrations/airflow"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + (" (integrations/airflow dirty)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _run(dag: Any, sink: Any) -> float:
    """Wall seconds of one ``dag.test()``; fails loudly if any task did not succeed."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        run = dag.test()
    elapsed = time.perf_counter() - start
    state = getattr(run.state, "value", run.state)
    if state != "success":
        raise SystemExit(f"{dag.dag_id} ended {state}; see {sink.name}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20, help="tasks per DAG (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="meadow-airflow-bench-"))
    dags = root / "dags"
    dags.mkdir()
    (dags / "bench_dags.py").write_text(_DAG_FILE)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "MEADOW_HOME": str(root / "meadow"),
            "BENCH_TASKS": str(args.tasks),
            "BENCH_VENV_CACHE": str(root / "venv-cache"),
        }
    )
    console = Console(width=130)
    load = os.getloadavg()
    console.print(
        f"commit {_commit()}, {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f}, "
        f"{args.tasks} tasks per DAG, median of {args.repeats} rounds"
    )
    sink = open(root / "airflow-output.log", "a", buffering=1)  # noqa: SIM115
    try:
        print("... airflow db migrate", file=sys.stderr)
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            check=True,
            capture_output=True,
        )
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            spec = importlib.util.spec_from_file_location("bench_dags", dags / "bench_dags.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        times: dict[str, list[float]] = {dag_id: [] for _, dag_id in ROWS}
        for _, dag_id in ROWS:
            print(f"... warm-up {dag_id}", file=sys.stderr)
            _run(getattr(module, dag_id), sink)
        for round_number in range(args.repeats):
            for _, dag_id in ROWS:
                print(f"... round {round_number + 1}: {dag_id}", file=sys.stderr)
                times[dag_id].append(_run(getattr(module, dag_id), sink))
    finally:
        sink.close()
        from meadow_core import LocalHost

        LocalHost(home=root / "meadow").shutdown()
        shutil.rmtree(root, ignore_errors=True)

    floor = statistics.median(times["bench_python"])
    venv = statistics.median(times["bench_virtualenv"])
    table = Table(title=f"dag.test() of {args.tasks} small tasks (wall time of the whole run)")
    table.add_column("operator")
    table.add_column("median s", justify="right")
    table.add_column("min s", justify="right")
    table.add_column("ms per task", justify="right")
    table.add_column("vs PythonOperator", justify="right")
    table.add_column("vs virtualenv", justify="right")
    for label, dag_id in ROWS:
        median = statistics.median(times[dag_id])
        table.add_row(
            label,
            f"{median:.2f}",
            f"{min(times[dag_id]):.2f}",
            f"{1000 * median / args.tasks:.0f}",
            f"{median / floor:.2f}x",
            f"{median / venv:.2f}x",
        )
    console.print(table)
    meadow = statistics.median(times["bench_meadow"])
    console.print(
        f"targets: faster than the virtualenv operator: "
        f"{'met' if meadow < venv else 'MISSED'}; within 1.5x of PythonOperator: "
        f"{'met' if meadow <= 1.5 * floor else 'MISSED'} ({meadow / floor:.2f}x)"
    )


if __name__ == "__main__":
    main()
