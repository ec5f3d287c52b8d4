"""``meadow_executor`` on LocalHost against Dagster's ``multiprocess_executor``.

One job of 10 small ops in a fan-out/fan-in shape (a source, 8 parallel ops, a sink),
run with each executor on the same persistent instance, in alternation. The first run
of each executor is reported apart (Meadow's includes starting its agent and warm
workers; the multiprocess executor has no state to warm); then the median, min and max
of ``--runs`` more. Run from the repository root::

    .venvs/dagster/bin/python benchmarks/dagster_executor.py           # 3 timed runs each
    .venvs/dagster/bin/python benchmarks/dagster_executor.py --runs 1  # quick

Meadow gets a temporary home (agent shut down at the end); the instance is a temporary
directory too, so nothing is left behind.
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dagster import (
    DagsterInstance,
    FilesystemIOManager,
    execute_job,
    job,
    multiprocess_executor,
    op,
    reconstructable,
)
from meadow_dagster import meadow_executor, meadow_io_manager

FAN_OUT = 8


@op
def source() -> list[int]:
    return list(range(100))


def _make_branch(index: int):  # type: ignore[no-untyped-def]
    @op(name=f"branch_{index}")
    def branch(numbers: list[int]) -> int:
        return sum(n * index for n in numbers)

    return branch


BRANCHES = [_make_branch(i) for i in range(FAN_OUT)]


@op
def sink(values: list[int]) -> int:
    return sum(values)


def _graph() -> None:
    numbers = source()
    sink([branch(numbers) for branch in BRANCHES])


@job(executor_def=meadow_executor, resource_defs={"io_manager": meadow_io_manager})
def fan_meadow() -> None:
    _graph()


@job(executor_def=multiprocess_executor, resource_defs={"io_manager": FilesystemIOManager()})
def fan_multiprocess() -> None:
    _graph()


def _run(job_fn: object, instance: DagsterInstance) -> float:
    started = time.perf_counter()
    with execute_job(reconstructable(job_fn), instance=instance) as result:  # type: ignore[arg-type]
        assert result.success, f"{job_fn} failed"
        assert result.output_for_node("sink") == sum(range(100)) * sum(range(FAN_OUT))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per executor")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    logging.getLogger("meadow").setLevel(logging.WARNING)

    from rich.console import Console
    from rich.table import Table

    from meadow_core import LocalHost

    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="meadow-dagster-bench-") as tmp:
        home = Path(tmp) / "meadow"
        os.environ["MEADOW_HOME"] = str(home)
        instance_dir = Path(tmp) / "instance"
        instance_dir.mkdir()
        (instance_dir / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        host = LocalHost(home=home, idle_timeout=60)
        timings: dict[str, list[float]] = {"meadow": [], "multiprocess": []}
        try:
            with DagsterInstance.local_temp(str(instance_dir)) as instance:
                for round_ in range(args.runs + 1):
                    for name, job_fn in (
                        ("meadow", fan_meadow),
                        ("multiprocess", fan_multiprocess),
                    ):
                        seconds = _run(job_fn, instance)
                        timings[name].append(seconds)
                        print(f"... run {round_}: {name} {seconds:.2f}s", file=sys.stderr)
        finally:
            host.shutdown()

    table = Table(
        title=f"Dagster job of {FAN_OUT + 2} ops (fan-out/fan-in), {os.cpu_count()} CPUs, "
        f"load {load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    for column in ("executor", "first run (s)", "median (s)", "min (s)", "max (s)", "runs"):
        table.add_column(column, justify="right" if column != "executor" else "left")
    for name in ("meadow", "multiprocess"):
        first, rest = timings[name][0], timings[name][1:]
        table.add_row(
            "meadow_executor (LocalHost)" if name == "meadow" else "multiprocess_executor",
            f"{first:.2f}",
            f"{statistics.median(rest):.2f}",
            f"{min(rest):.2f}",
            f"{max(rest):.2f}",
            str(len(rest)),
        )
    meadow_median = statistics.median(timings["meadow"][1:])
    multi_median = statistics.median(timings["multiprocess"][1:])
    table.add_row(
        "ratio multiprocess / meadow",
        f"{timings['multiprocess'][0] / timings['meadow'][0]:.2f}x",
        f"{multi_median / meadow_median:.2f}x",
        "",
        "",
        "",
    )
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
