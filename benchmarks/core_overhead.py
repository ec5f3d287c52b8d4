"""Meadow's core overhead against dask.distributed and the standard library.

Two benchmarks, each printed as a ``rich`` table:

1. Warm call overhead: the latency of one trivial function call, after warm-up, on
   Meadow's ``LocalHost``, a Dask ``LocalCluster`` and a ``ProcessPoolExecutor``.
2. Map throughput: ``--map-tasks`` tasks that each busy-wait ``--task-ms`` ms, on
   ``--workers`` workers, through Meadow's ``run_map``, ``multiprocessing.Pool.map`` and
   Dask's ``client.map``.

Run from the repository root::

    .venv/bin/python benchmarks/core_overhead.py            # full settings
    .venv/bin/python benchmarks/core_overhead.py --quick    # smoke run

Each system is started, measured and shut down before the next one starts, so no idle
cluster competes for the CPUs. See ``benchmarks/README.md`` for the targets.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Runnable as ``python benchmarks/core_overhead.py`` from a checkout without installing.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

#: Warm-up calls before the warm-call measurement starts (the brief asks for >= 20).
MIN_WARMUP_CALLS = 20
#: Timed repetitions of each map; the best one is reported.
MAP_REPEATS = 3


# -- the functions under test (module level, so every system can ship them) ------------


def trivial(x: int) -> int:
    return x


def busy(i: int, task_ms: float = 1.0) -> int:
    """Keep a CPU busy for ``task_ms`` milliseconds (a spin on perf_counter, not a sleep)."""
    end = time.perf_counter() + task_ms / 1000.0
    while time.perf_counter() < end:
        pass
    return i


# -- helpers ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_calls(call: Callable[[int], object], count: int, warmup: int) -> list[float]:
    """Latencies in ms of ``count`` calls of ``call(i)``, after ``warmup`` untimed ones."""
    for i in range(warmup):
        if call(i) != i:
            raise AssertionError("warm-up call returned a wrong value")
    latencies = []
    for i in range(count):
        start = time.perf_counter_ns()
        value = call(i)
        latencies.append((time.perf_counter_ns() - start) / 1e6)
        if value != i:
            raise AssertionError(f"call {i} returned {value!r}")
    return latencies


def time_map(run: Callable[[], list[int]], num_tasks: int, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` runs of ``run()``, after one untimed warm-up run."""
    check_map(run(), num_tasks, "warm-up run")
    walls = []
    for repeat in range(repeats):
        start = time.perf_counter()
        result = run()
        walls.append(time.perf_counter() - start)
        check_map(result, num_tasks, f"timed run {repeat + 1}")
    return walls


def check_map(result: list[int], num_tasks: int, what: str) -> None:
    """Fail loudly, naming the first wrong items, if a map did not return range(n)."""
    result = list(result)
    wrong = [(i, v) for i, v in enumerate(result) if v != i]
    if len(result) != num_tasks or wrong:
        raise AssertionError(
            f"{what} returned {len(result)} results for {num_tasks} tasks, "
            f"{len(wrong)} wrong; first wrong (index, value): {wrong[:10]}"
        )


def meadow_revision() -> str:
    """The git commit of meadow_core, marked dirty if it has uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", _REPO_ROOT, *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "meadow_core")
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    if not commit:
        import meadow_core

        return meadow_core.__version__
    return commit + (" (dirty)" if dirty else "")


def quiet_dask() -> None:
    """Silence Dask's log and warning noise (startup banners, close-time chatter)."""
    import dask

    dask.config.set(
        {
            "distributed.logging.distributed": "error",
            "distributed.admin.system-monitor.gil.enabled": False,
        }
    )
    for name in ("distributed", "dask", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module="distributed")
    warnings.filterwarnings("ignore", module="dask")


@contextlib.contextmanager
def dask_client(n_workers: int) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )
    client = Client(cluster)  # type: ignore[no-untyped-call]
    try:
        client.wait_for_workers(n_workers)
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            cluster.close()


@contextlib.contextmanager
def meadow_host(workers: int) -> Iterator[Any]:
    """A LocalHost on a temporary home of its own; its agent is stopped on exit."""
    from meadow_core import LocalHost

    with tempfile.TemporaryDirectory(prefix="meadow-bench-") as home:
        # Each task asks for 1 logical CPU; let the agent run ``workers`` at once even
        # when that is more than this machine's CPU count (the peers are not capped).
        host = LocalHost(
            home=home, idle_timeout=120, logical_cpu=float(max(workers, os.cpu_count() or 1))
        )
        try:
            yield host
        finally:
            host.shutdown()


# -- benchmark 1: warm call overhead --------------------------------------------------


@dataclass
class CallStats:
    name: str
    latencies: list[float] = field(repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p90(self) -> float:
        return percentile(self.latencies, 90)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


def bench_calls(calls: int, warmup: int, log: Callable[[str], None]) -> dict[str, CallStats]:
    from meadow_core import run_function_sync

    stats: dict[str, CallStats] = {}

    log("warm calls: Meadow LocalHost")
    with meadow_host(2) as host:
        stats["meadow"] = CallStats(
            "Meadow LocalHost",
            time_calls(lambda i: run_function_sync(trivial, host, args=(i,)), calls, warmup),
        )

    log("warm calls: Dask LocalCluster")
    with dask_client(2) as client:
        stats["dask"] = CallStats(
            "Dask LocalCluster",
            time_calls(
                lambda i: client.submit(trivial, i, pure=False).result(),
                calls,
                warmup,
            ),
        )

    log("warm calls: ProcessPoolExecutor")
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        stats["pool"] = CallStats(
            "ProcessPoolExecutor",
            time_calls(lambda i: pool.submit(trivial, i).result(), calls, warmup),
        )
    return stats


# -- benchmark 2: map throughput ------------------------------------------------------


@dataclass
class MapStats:
    name: str
    walls: list[float]
    num_tasks: int

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def throughput(self) -> float:
        return self.num_tasks / self.best


def bench_map(
    num_tasks: int, task_ms: float, workers: int, log: Callable[[str], None]
) -> dict[str, MapStats]:
    from meadow_core import run_map_sync

    task = functools.partial(busy, task_ms=task_ms)
    items = range(num_tasks)
    stats: dict[str, MapStats] = {}

    log("map: Meadow LocalHost")
    with meadow_host(workers) as host:
        walls = time_map(
            lambda: run_map_sync(task, items, host, num_concurrent_tasks=workers),
            num_tasks,
            MAP_REPEATS,
        )
        stats["meadow"] = MapStats("Meadow LocalHost", walls, num_tasks)

    log("map: multiprocessing.Pool")
    with multiprocessing.Pool(workers) as pool:
        walls = time_map(lambda: pool.map(task, items), num_tasks, MAP_REPEATS)
        stats["pool"] = MapStats("multiprocessing.Pool", walls, num_tasks)

    log("map: Dask LocalCluster")
    with dask_client(workers) as client:
        walls = time_map(
            lambda: client.gather(client.map(task, items, pure=False)),
            num_tasks,
            MAP_REPEATS,
        )
        stats["dask"] = MapStats("Dask LocalCluster", walls, num_tasks)
    return stats


# -- output ----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "[bold green]MET[/]" if ok else "[bold red]MISSED[/]"


def print_calls(console: Console, stats: dict[str, CallStats], calls: int, warmup: int) -> None:
    dask_median = stats["dask"].median
    meadow_median = stats["meadow"].median
    table = Table(
        title=f"1. Warm call overhead: trivial(i), {calls} timed calls after {warmup} warm-up",
        title_justify="left",
        caption=(
            "Meadow: run_function_sync(trivial, host, args=(i,)); Dask: LocalCluster("
            "n_workers=2, threads_per_worker=1, processes=True), client.submit(trivial, i, "
            "pure=False).result(); ProcessPoolExecutor(2).submit(trivial, i).result(). "
            "vs Dask = this median / Dask median; Meadow / this = Meadow median / this median "
            "(below 1 means Meadow is faster)."
        ),
        caption_justify="left",
    )
    table.add_column("System")
    table.add_column("median ms", justify="right")
    table.add_column("p90 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("vs Dask", justify="right")
    table.add_column("Meadow / this", justify="right")
    for key in ("meadow", "dask", "pool"):
        s = stats[key]
        table.add_row(
            s.name,
            f"{s.median:.3f}",
            f"{s.p90:.3f}",
            f"{s.p99:.3f}",
            f"{s.median / dask_median:.2f}x",
            f"{meadow_median / s.median:.2f}x",
        )
    console.print(table)
    ratio = meadow_median / dask_median
    console.print(
        f"Target: Meadow median <= Dask median (ratio <= 1.00x): "
        f"{meadow_median:.3f} ms vs {dask_median:.3f} ms = {ratio:.2f}x  {verdict(ratio <= 1.0)}"
    )
    console.print()


def print_map(
    console: Console, stats: dict[str, MapStats], num_tasks: int, task_ms: float, workers: int
) -> None:
    ideal = num_tasks * task_ms / 1000.0 / workers
    dask_tp = stats["dask"].throughput
    pool_tp = stats["pool"].throughput
    meadow_tp = stats["meadow"].throughput
    table = Table(
        title=(
            f"2. Map throughput: {num_tasks} tasks x {task_ms:g} ms busy-wait, {workers} workers "
            f"(best of {MAP_REPEATS} runs after 1 warm-up run; ideal {ideal:.3f} s)"
        ),
        title_justify="left",
        caption=(
            f"Meadow: run_map_sync(busy, range(n), host, num_concurrent_tasks={workers}); Pool: "
            f"multiprocessing.Pool({workers}).map(busy, range(n)) (default chunksize); Dask: "
            f"client.gather(client.map(busy, range(n), pure=False)) on LocalCluster(n_workers="
            f"{workers}, threads_per_worker=1). vs ideal = ideal wall / best wall; vs Dask = this "
            "tasks/s / Dask tasks/s; Meadow / this = Meadow tasks/s / this tasks/s."
        ),
        caption_justify="left",
    )
    table.add_column("System")
    table.add_column("best wall s", justify="right")
    table.add_column("all runs s", justify="right")
    table.add_column("tasks/s", justify="right")
    table.add_column("vs ideal", justify="right")
    table.add_column("vs Dask", justify="right")
    table.add_column("Meadow / this", justify="right")
    for key in ("meadow", "pool", "dask"):
        s = stats[key]
        table.add_row(
            s.name,
            f"{s.best:.3f}",
            " ".join(f"{w:.3f}" for w in s.walls),
            f"{s.throughput:,.0f}",
            f"{ideal / s.best:.0%}",
            f"{s.throughput / dask_tp:.2f}x",
            f"{meadow_tp / s.throughput:.2f}x",
        )
    console.print(table)
    vs_dask = meadow_tp / dask_tp
    vs_pool = meadow_tp / pool_tp
    console.print(
        f"Target: Meadow throughput >= 1.0x Dask: {vs_dask:.2f}x  {verdict(vs_dask >= 1.0)}"
    )
    console.print(
        f"Target: Meadow throughput >= 0.5x Pool: {vs_pool:.2f}x  {verdict(vs_pool >= 0.5)}"
    )


# -- main -------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Meadow core overhead vs dask.distributed and the standard library."
    )
    parser.add_argument("--calls", type=int, default=300, help="timed warm calls (300)")
    parser.add_argument("--map-tasks", type=int, default=2000, help="tasks in the map (2000)")
    parser.add_argument("--task-ms", type=float, default=1.0, help="busy-wait per task (1.0)")
    parser.add_argument("--workers", type=int, default=2, help="workers for the map (2)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 50 calls and 300 map tasks"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = min(args.calls, 50)
        args.map_tasks = min(args.map_tasks, 300)
    if args.calls < 1 or args.map_tasks < 1 or args.workers < 1 or args.task_ms < 0:
        parser.error("--calls, --map-tasks and --workers must be positive, --task-ms >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    quiet_dask()
    # Piped output (a log, CI) would otherwise be wrapped at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=130)
    err = Console(stderr=True)

    def log(text: str) -> None:
        err.print(f"[dim]... {text}[/]")

    warmup = max(MIN_WARMUP_CALLS, args.calls // 10)
    console.print(
        f"[bold]Meadow core overhead[/]  meadow_core {meadow_revision()}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} logical CPUs, "
        f"load average {os.getloadavg()[0]:.2f}, start method {multiprocessing.get_start_method()}"
    )
    call_stats = bench_calls(args.calls, warmup, log)
    map_stats = bench_map(args.map_tasks, args.task_ms, args.workers, log)
    console.print()
    print_calls(console, call_stats, args.calls, warmup)
    print_map(console, map_stats, args.map_tasks, args.task_ms, args.workers)


if __name__ == "__main__":
    main()
