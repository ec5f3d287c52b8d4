"""Warm ``run_function`` through the dev cloud against the same call on ``LocalHost``,
and the AWS API calls each warm and cold EC2 job makes.

One trivial function (returns 1), one deployment (a mirrored code snapshot holding only
the function's module, in an environment built from a one-line requirements file), the
same resources, on two hosts:

* ``LocalHost`` on a fresh temporary home: warm-up calls, then ``--calls`` timed calls;
  its agent is shut down afterwards.
* ``AllocEC2Instance`` on the dev cloud this script starts (moto in server mode plus
  simulated VMs, root only): ``meadow_core.clouds.aws.admin.install``, one cold call (it
  launches the instance, which boots from its user data), then warm calls that reuse it.
  At the end the installation is removed (its instance terminated) and the dev cloud
  and moto are stopped, also on failure.

API calls are counted three ways: the caller's with a botocore ``before-call`` hook on
the session ``meadow_core.clouds.aws.session`` makes its clients from; the simulator's own
``describe_instances`` polling with the same hook on its clients; and every request
moto served from its access log (one line per request). Instance-side calls are moto's
count minus the other two. The instance agent polls even when idle (control queue long
poll, registry heartbeat), so that background rate is measured in idle windows and
subtracted from the warm jobs' window; the cold job's instance count is raw (it is
everything the instance did from boot to the end of its first job).

Run from the repository root, as root::

    .venv/bin/python benchmarks/ec2_devcloud.py
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import importlib
import logging
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Runnable as ``python benchmarks/ec2_devcloud.py`` from a checkout without installing.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

# The benchmarks' shared report helper (this folder is on sys.path when run as a script).
from core_overhead import meadow_revision  # noqa: E402
from meadow_devcloud.ec2 import DevCloud, DevCloudError  # noqa: E402
from meadow_devcloud.ec2.moto import MotoServer  # noqa: E402
from meadow_devcloud.vm import netns  # noqa: E402
from meadow_devcloud.vm.simulator import check_host, prefix_for  # noqa: E402

import meadow_core as mc  # noqa: E402
from meadow_core.clouds.aws import admin, session  # noqa: E402
from meadow_core.clouds.aws.host import AllocEC2Instance  # noqa: E402
from meadow_core.hosts.local import LocalHost  # noqa: E402

REGION = "us-east-2"
#: Long enough that the instance stays warm for the whole run.
IDLE_TIMEOUT = 120.0
RESOURCES = mc.Resources(logical_cpu=1, memory_gb=1, max_eviction_rate=0)
WARMUP_CALLS = 3
#: After a job, before its window closes: the agent's last calls for it land inside.
SETTLE_SECONDS = 2.0
TASK_MODULE = "meadow_bench_ec2_task"
TASK_SOURCE = '"""The benchmark\'s trivial task."""\n\n\ndef one() -> int:\n    return 1\n'
#: A werkzeug access line, ``127.0.0.1 - - [date] "POST / HTTP/1.1" 200 -``; a status
#: other than 200 wraps the request in ANSI colour codes.
_COLOUR = rb"(?:\x1b\[[0-9;]*m)*"
_ACCESS_LINE = re.compile(rb'\] "' + _COLOUR + rb"[A-Z]+ \S+ HTTP/[0-9.]+" + _COLOUR + rb'" \d{3} ')

console = Console()
progress = Console(stderr=True)


# -- counting ---------------------------------------------------------------------------


class ApiCounter:
    """botocore ``before-call`` events, per side, per ``service.Operation``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )

    def hook(self, side: str) -> Callable[..., None]:
        def before_call(event_name: str, **_: Any) -> None:
            operation = event_name.removeprefix("before-call.")
            with self._lock:
                self.counts[side][operation] += 1

        return before_call

    def snapshot(self) -> dict[str, collections.Counter[str]]:
        with self._lock:
            return {side: collections.Counter(c) for side, c in self.counts.items()}


class MotoLog:
    """Counts the access lines moto has written so far (read incrementally)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._lines = 0
        self._partial = b""

    def count(self) -> int:
        with self.path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        complete, _, self._partial = data.rpartition(b"\n")
        self._lines += sum(1 for line in complete.split(b"\n") if _ACCESS_LINE.search(line))
        return self._lines


@dataclasses.dataclass
class Mark:
    at: float
    moto: int
    calls: dict[str, collections.Counter[str]]


@dataclasses.dataclass
class Window:
    """What happened between two marks."""

    seconds: float
    moto: int
    caller: collections.Counter[str]
    simulator: int

    @property
    def instance(self) -> int:
        return self.moto - sum(self.caller.values()) - self.simulator


class Meter:
    def __init__(self, counter: ApiCounter, moto_log: MotoLog) -> None:
        self.counter = counter
        self.moto_log = moto_log

    def mark(self) -> Mark:
        # moto writes a request's line after answering it: let in-flight ones land.
        time.sleep(0.2)
        return Mark(time.monotonic(), self.moto_log.count(), self.counter.snapshot())

    @staticmethod
    def between(start: Mark, end: Mark) -> Window:
        def side(name: str) -> collections.Counter[str]:
            after = end.calls.get(name, collections.Counter())
            before = start.calls.get(name, collections.Counter())
            return after - before

        return Window(
            seconds=end.at - start.at,
            moto=end.moto - start.moto,
            caller=side("caller"),
            simulator=sum(side("simulator").values()),
        )


# -- the task and the deployment ----------------------------------------------------------


def task_function(folder: Path) -> Callable[[], int]:
    """The trivial function, from a module of its own in ``folder`` (importable on the
    instance through the snapshot of ``folder``, so it is pickled by reference)."""
    (folder / f"{TASK_MODULE}.py").write_text(TASK_SOURCE)
    sys.path.insert(0, str(folder))
    function: Callable[[], int] = importlib.import_module(TASK_MODULE).one
    return function


def deployment(folder: Path, requirements: Path) -> mc.Deployment:
    requirements.write_text("six==1.16.0\n")
    return asyncio.run(
        mc.Deployment.mirror_local(
            interpreter=mc.PipRequirementsFile(str(requirements)),
            additional_sys_paths=[str(folder)],
            include_sys_path=False,
        )
    )


def timed_calls(call: Callable[[], object], n: int) -> list[float]:
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
        if result != 1:
            raise AssertionError(f"the task returned {result!r}, not 1")
    return seconds


# -- the two hosts -------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    name: str
    seconds: list[float]
    caller: float | None = None
    instance: float | None = None


def measure_local(function: Callable[[], int], deploy: mc.Deployment, calls: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="meadow-bench-local-") as home:
        host = LocalHost(home=Path(home))
        try:

            def call() -> object:
                return mc.run_function_sync(
                    function, host=host, resources=RESOURCES, deployment=deploy
                )

            progress.print("... LocalHost: warm-up (builds the environment)")
            timed_calls(call, WARMUP_CALLS)
            progress.print(f"... LocalHost: {calls} warm calls")
            return Row("LocalHost warm", timed_calls(call, calls))
        finally:
            host.shutdown()


@contextmanager
def dev_cloud(work: Path, counter: ApiCounter) -> Iterator[tuple[DevCloud, MotoLog]]:
    """moto + the simulator, the environment pointing at them, Meadow installed; all of
    it removed afterwards (instances terminated, VMs and network namespaces gone)."""
    moto_log = work / "moto.log"
    state_dir = work / "devcloud"
    moto = MotoServer.start(log_path=moto_log)
    cloud: DevCloud | None = None
    saved = dict(os.environ)
    try:
        cloud = DevCloud.start(state_dir, moto_url=moto.url)
        # The simulator is the cloud, not Meadow: its polling is counted to be subtracted.
        for client in cloud.instances.clients():
            client.meta.events.register("before-call", counter.hook("simulator"))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
            os.environ.pop(name, None)
        os.environ.update({**cloud.env, "MEADOW_AWS_CATALOG": "snapshot"})
        session.reset()
        # Registered before any client exists: botocore copies a session's handlers into
        # each client it makes, so every call meadow_core.clouds.aws makes here is counted.
        session._session().events.register("before-call", counter.hook("caller"))
        progress.print("... dev cloud: meadow aws install")
        admin.install(REGION)
        try:
            yield cloud, MotoLog(moto_log)
        finally:
            progress.print("... dev cloud: meadow aws uninstall")
            try:
                admin.uninstall(REGION)
            except Exception as error:  # stop() below still destroys every VM
                progress.print(f"uninstall failed: {error}")
    finally:
        if cloud is not None:
            cloud.stop()
        moto.stop()
        os.environ.clear()
        os.environ.update(saved)
        session.reset()
        left = netns.existing(prefix_for(state_dir))
        if left or moto.process is None or moto.process.poll() is None:
            raise RuntimeError(f"the dev cloud left network namespaces {left} or moto running")


def per_job(window: Window, jobs: int, background_rate: float | None) -> tuple[float, float]:
    """(caller, instance) calls per job; instance net of ``background_rate`` if given."""
    instance = float(window.instance)
    if background_rate is not None:
        instance -= background_rate * window.seconds
    return sum(window.caller.values()) / jobs, instance / jobs


def measure_dev_cloud(
    function: Callable[[], int], deploy: mc.Deployment, calls: int, idle_seconds: float
) -> tuple[list[Row], dict[str, Any]]:
    counter = ApiCounter()
    with (
        tempfile.TemporaryDirectory(prefix="meadow-bench-ec2-") as work,
        dev_cloud(Path(work), counter) as (cloud, moto_log),
    ):
        meter = Meter(counter, moto_log)
        host = AllocEC2Instance(region_name=REGION, idle_timeout=IDLE_TIMEOUT)

        def call() -> object:
            return mc.run_function_sync(function, host=host, resources=RESOURCES, deployment=deploy)

        progress.print("... dev cloud: cold call (launches an instance)")
        start = meter.mark()
        cold_seconds = timed_calls(call, 1)
        time.sleep(SETTLE_SECONDS)
        cold = meter.between(start, meter.mark())
        launched = cloud.vms()
        if len(launched) != 1:
            raise AssertionError(f"expected one VM after the cold call, got {launched}")

        progress.print(f"... dev cloud: {idle_seconds:.0f}s idle (instance background)")
        start = meter.mark()
        time.sleep(idle_seconds)
        idle_before = meter.between(start, meter.mark())

        timed_calls(call, WARMUP_CALLS)
        progress.print(f"... dev cloud: {calls} warm calls")
        start = meter.mark()
        warm_seconds = timed_calls(call, calls)
        time.sleep(SETTLE_SECONDS)
        warm = meter.between(start, meter.mark())
        if cloud.vms() != launched:
            raise AssertionError(f"warm calls must reuse {launched}, VMs now: {cloud.vms()}")

        progress.print(f"... dev cloud: {idle_seconds:.0f}s idle (instance background)")
        start = meter.mark()
        time.sleep(idle_seconds)
        idle_after = meter.between(start, meter.mark())

    idle_seconds_total = idle_before.seconds + idle_after.seconds
    background = (idle_before.instance + idle_after.instance) / idle_seconds_total
    cold_caller, cold_instance = per_job(cold, 1, None)
    warm_caller, warm_instance = per_job(warm, calls, background)
    rows = [
        Row("dev cloud warm", warm_seconds, warm_caller, warm_instance),
        Row("dev cloud cold", cold_seconds, cold_caller, cold_instance),
    ]
    details = {
        "background_rate": background,
        "idle_seconds": idle_seconds_total,
        "idle_instance_calls": idle_before.instance + idle_after.instance,
        "idle_caller_calls": sum(idle_before.caller.values()) + sum(idle_after.caller.values()),
        "warm_window": warm,
        "cold_window": cold,
        "warm_caller_ops": {op: n / calls for op, n in warm.caller.items()},
        "cold_caller_ops": dict(cold.caller),
    }
    return rows, details


# -- report ------------------------------------------------------------------------------


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def report(rows: list[Row], details: dict[str, Any], calls: int) -> None:
    local = statistics.median(rows[0].seconds)
    table = Table(title=f"warm run_function, {calls} calls; AWS API calls per job")
    for column in ("", "median ms", "p90 ms", "vs Local", "caller", "instance", "total"):
        table.add_column(column, justify="left" if not column else "right")
    for row in rows:
        median = statistics.median(row.seconds)
        counts = ["-", "-", "-"]
        if row.caller is not None and row.instance is not None:
            total = row.caller + row.instance
            counts = [f"{row.caller:.1f}", f"{row.instance:.1f}", f"{total:.1f}"]
        spread = f"{p90(row.seconds) * 1000:.0f}" if len(row.seconds) > 1 else "-"
        table.add_row(row.name, f"{median * 1000:.0f}", spread, f"{median / local:.1f}x", *counts)
    console.print(table)
    warm: Window = details["warm_window"]
    cold: Window = details["cold_window"]
    console.print(
        f"API calls are per job. Instance = moto's access-log lines minus the caller's calls "
        f"(botocore hook) minus the simulator's own polling ({warm.simulator + cold.simulator} "
        f"calls in these windows, hooked too). Warm: net of the idle instance's background "
        f"rate, {details['background_rate']:.2f} calls/s ({details['idle_instance_calls']} "
        f"calls in {details['idle_seconds']:.0f}s idle; control-queue long polls and registry "
        f"heartbeats); raw, the warm window held {warm.instance} instance calls in "
        f"{warm.seconds:.1f}s. Cold: raw, everything the instance did from boot to the end "
        f"of its first job ({cold.instance} calls over {cold.seconds:.1f}s)."
    )
    ops = Table(title="caller API calls by operation")
    ops.add_column("operation")
    ops.add_column("per warm job", justify="right")
    ops.add_column("cold job", justify="right")
    names = sorted(set(details["warm_caller_ops"]) | set(details["cold_caller_ops"]))
    for name in names:
        ops.add_row(
            name,
            f"{details['warm_caller_ops'].get(name, 0):.2f}",
            str(details["cold_caller_ops"].get(name, 0)),
        )
    console.print(ops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="timed warm calls per host")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=8.0,
        help="each of the two idle windows that measure the instance's background calls",
    )
    args = parser.parse_args()
    if args.calls < 2:
        parser.error("--calls must be at least 2")
    try:
        check_host()
    except DevCloudError as error:
        print(f"the dev cloud cannot run here: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("botocore", "urllib3", "meadow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console.print(
        f"meadow_core {meadow_revision()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="meadow-bench-task-") as scratch:
        folder = Path(scratch) / "code"
        folder.mkdir()
        function = task_function(folder)
        deploy = deployment(folder, Path(scratch) / "requirements.txt")
        rows = [measure_local(function, deploy, args.calls)]
        cloud_rows, details = measure_dev_cloud(function, deploy, args.calls, args.idle_seconds)
    report(rows + cloud_rows, details, args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
