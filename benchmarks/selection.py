"""Instance selection: speed, and cost against the exact optimum.

For 1,000-task maps of several resource shapes over the shipped EC2 snapshot (all of
us-east-2's types, on-demand and spot), times ``meadow_core.allocation.selection.select``
and compares the hourly price of its choice with the exact optimum of the integer program

    minimise  sum_i price_i * n_i   subject to   sum_i fit_i * n_i >= tasks,  n_i >= 0 integer

over the same eligible offers (scipy.optimize.milp). Meadow's plan may cost a little more
than the optimum on purpose: it spreads spot launches over equally cheap types.

Run from the repository root::

    .venv/bin/python benchmarks/selection.py [--tasks 1000] [--repeats 30]

Targets: under 50 ms per selection, within 1 % of the optimum.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.optimize import Bounds, LinearConstraint, milp

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from meadow_core.allocation.selection import Offer, eligible, select  # noqa: E402
from meadow_core.clouds.aws.catalog import load_snapshot  # noqa: E402
from meadow_core.resources import Resources  # noqa: E402

TARGET_MS = 50.0
TARGET_GAP = 1.0

SHAPES: list[tuple[str, Resources]] = [
    ("1 CPU / 2 GB, on-demand", Resources(logical_cpu=1, memory_gb=2, max_eviction_rate=0)),
    ("1 CPU / 2 GB, spot <= 80 %", Resources(logical_cpu=1, memory_gb=2)),
    ("2 CPU / 8 GB, on-demand", Resources(logical_cpu=2, memory_gb=8, max_eviction_rate=0)),
    ("2 CPU / 8 GB, spot <= 10 %", Resources(logical_cpu=2, memory_gb=8, max_eviction_rate=10)),
    ("4 CPU / 30 GB, spot <= 80 %", Resources(logical_cpu=4, memory_gb=30)),
    (
        "16 CPU / 64 GB avx512, on-demand",
        Resources(logical_cpu=16, memory_gb=64, flags_required="avx512", max_eviction_rate=0),
    ),
    ("1 GPU / 4 CPU / 16 GB, spot", Resources(logical_cpu=4, memory_gb=16, gpus=1)),
    (
        "1 GPU / 4 CPU / 16 GB, on-demand",
        Resources(logical_cpu=4, memory_gb=16, gpus=1, max_eviction_rate=0),
    ),
]


def optimum(resources: Resources, offers: list[Offer], tasks: int) -> float:
    """The cheapest hourly price of instances holding ``tasks`` workers (exact)."""
    candidates = eligible(resources, offers)
    prices = np.array([c.offer.price_per_hour for c in candidates])
    fits = np.array([[c.fit for c in candidates]], dtype=float)
    upper = np.array([float(-(-tasks // c.fit)) for c in candidates])
    result = milp(
        c=prices,
        constraints=LinearConstraint(fits, lb=tasks, ub=np.inf),
        integrality=np.ones(len(candidates)),
        bounds=Bounds(0, upper),
    )
    if not result.success:
        raise RuntimeError(f"milp failed: {result.message}")
    return float(result.fun)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="workers wanted per map")
    parser.add_argument("--repeats", type=int, default=30, help="timed selections per shape")
    args = parser.parse_args()

    snapshot = load_snapshot()
    offers = snapshot.offers()
    console = Console()
    table = Table(
        title=f"Selection for {args.tasks}-task maps over {len(offers)} offers "
        f"({snapshot.region}, prices of {snapshot.date}); median of {args.repeats} runs"
    )
    for column in (
        "shape",
        "selection ms (median / max)",
        "Meadow $/h",
        "optimum $/h",
        "gap %",
        "types launched",
    ):
        table.add_column(
            column, justify="left" if column in ("shape", "types launched") else "right"
        )
    ok = True
    for name, resources in SHAPES:
        times = []
        plan = None
        for _ in range(args.repeats):
            start = time.perf_counter()
            plan = select(resources, args.tasks, offers)
            times.append((time.perf_counter() - start) * 1000)
        assert plan is not None
        assert sum(launch.workers for launch in plan.launches) == args.tasks
        best = optimum(resources, offers, args.tasks)
        gap = (plan.cost_per_hour / best - 1) * 100
        median, worst = statistics.median(times), max(times)
        ok &= median < TARGET_MS and gap <= TARGET_GAP
        types = ", ".join(
            f"{launch.count}x {launch.offer.instance_type}{' (spot)' if launch.offer.spot else ''}"
            for launch in plan.launches
        )
        table.add_row(
            name,
            f"{median:.1f} / {worst:.1f}",
            f"{plan.cost_per_hour:.3f}",
            f"{best:.3f}",
            f"{gap:.2f}",
            types,
        )
    console.print(table)
    verdict = "met" if ok else "MISSED"
    console.print(f"Targets (< {TARGET_MS:g} ms median, gap <= {TARGET_GAP:g} %): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
