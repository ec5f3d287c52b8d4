"""MeadowTaskRunner against Prefect's own task runners, in the same run.

Two flows, each run on ``MeadowTaskRunner`` (``LocalHost``), ``ProcessPoolTaskRunner``
and ``ThreadPoolTaskRunner``:

1. 50 small tasks submitted one by one (``task.submit`` x 50);
2. a ``.map`` over 1,000 inputs.

Run from the repository root with the Prefect venv::

    .venvs/prefect/bin/python benchmarks/prefect_runner.py
    .venvs/prefect/bin/python benchmarks/prefect_runner.py --map-inputs 300   # quicker

Each runner does one small warm-up flow first (Meadow starts its agent, the process
pool imports Prefect in its children), then the 50-task flow is timed ``--repeat`` times
(best kept) and the map once (the process pool needs minutes for it). Target: Meadow
faster than the process pool on both flows.
The Prefect server is a throwaway ``prefect_test_harness``; the LocalHost agent lives
in a temporary home and is shut down at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import argparse
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meadow_prefect import MeadowTaskRunner
from prefect import flow, task
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.testing.utilities import prefect_test_harness
from rich.console import Console
from rich.table import Table

from meadow_core import LocalHost


@task
def small(x: int) -> int:
    """A small step: a little arithmetic, well under a millisecond."""
    return sum(range(x % 100)) + x


def many_tasks_flow(runner: TaskRunner[Any], count: int) -> Callable[[], list[int]]:
    @flow(task_runner=runner, name="fifty-small-tasks", log_prints=False)
    def fifty() -> list[int]:
        return [f.result() for f in [small.submit(i) for i in range(count)]]

    return fifty


def map_flow(runner: TaskRunner[Any], count: int) -> Callable[[], list[int]]:
    @flow(task_runner=runner, name="map", log_prints=False)
    def mapped() -> list[int]:
        return small.map(range(count)).result()

    return mapped


def best_of(repeat: int, run: Callable[[], list[int]], expected: list[int]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        elapsed = time.perf_counter() - started
        if result != expected:
            raise SystemExit(f"wrong result from {run!r}")
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--map-inputs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of the 50-task flow")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 110))  # the table needs ~100 columns
    err = Console(stderr=True)
    logging.getLogger("prefect").setLevel(logging.WARNING)

    home = Path(tempfile.mkdtemp(prefix="meadow-bench-prefect-"))
    host = LocalHost(home=home, idle_timeout=120)
    runners: dict[str, Callable[[], TaskRunner[Any]]] = {
        "MeadowTaskRunner (LocalHost)": lambda: MeadowTaskRunner(host=host),
        f"ProcessPoolTaskRunner ({args.workers})": lambda: ProcessPoolTaskRunner(
            max_workers=args.workers
        ),
        "ThreadPoolTaskRunner": lambda: ThreadPoolTaskRunner(),
    }
    expected_tasks = [sum(range(i % 100)) + i for i in range(args.tasks)]
    expected_map = [sum(range(i % 100)) + i for i in range(args.map_inputs)]
    times: dict[str, dict[str, float]] = {}
    try:
        with prefect_test_harness(server_startup_timeout=120):
            for name, make in runners.items():
                err.print(f"... {name}: warm-up")
                many_tasks_flow(make(), 4)()
                tasks_s = best_of(args.repeat, many_tasks_flow(make(), args.tasks), expected_tasks)
                err.print(f"... {name}: {args.tasks} tasks in {tasks_s:.2f} s")
                # One timed map: the process pool takes minutes for 1,000 inputs here.
                map_s = best_of(1, map_flow(make(), args.map_inputs), expected_map)
                err.print(f"... {name}: map over {args.map_inputs} in {map_s:.2f} s")
                times[name] = {"tasks": tasks_s, "map": map_s}
    finally:
        host.shutdown()
        shutil.rmtree(home, ignore_errors=True)

    meadow = next(iter(times))
    table = Table(
        title=(
            f"Prefect task runners ({args.tasks} tasks: best of {args.repeat}; map: one run), "
            f"{os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.2f}"
        )
    )
    table.add_column("runner")
    table.add_column(f"{args.tasks} tasks (s)", justify="right")
    table.add_column("vs Meadow", justify="right")
    table.add_column(f"map over {args.map_inputs} (s)", justify="right")
    table.add_column("vs Meadow", justify="right")
    for name, row in times.items():
        table.add_row(
            name,
            f"{row['tasks']:.2f}",
            f"{row['tasks'] / times[meadow]['tasks']:.2f}x",
            f"{row['map']:.2f}",
            f"{row['map'] / times[meadow]['map']:.2f}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()
