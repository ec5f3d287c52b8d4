"""What the conformance suite needs from a host, and the two hosts that provide it today.

A host joins the suite with a ``HostUnderTest`` (this protocol) and one line in
``conftest.HOSTS``. Everything the scenarios assert goes through the public API
(``meadow_core``'s ``run_*``, ``get_job``, ``list_jobs``, ``cancel_job``); the protocol
only adds what a user could not do through it: kill a task's process from outside, and
say what the host has launched and what it left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psutil

import meadow_core as mc
from meadow_core._portal import portal
from meadow_core.agent.processes import AGENT_HOME_VARIABLE
from meadow_core.hosts.base import Host

#: The root of this checkout: what a code snapshot ships so `tests.hosts.*` imports.
REPO_ROOT = Path(__file__).resolve().parents[2]

UNFINISHED = (mc.JobState.QUEUED, mc.JobState.RUNNING)


class HostUnderTest(Protocol):
    """One host, set up for the suite (module-scoped: warm machines are reused)."""

    #: Shown in messages; the pytest id is the param's.
    name: str
    host: Host
    #: What every scenario deploys with (``None``: the host's default).
    deployment: mc.Deployment | None
    #: What a small task asks for on this host.
    resources: mc.Resources
    #: The most memory one task may be given here (the retry-with-more-memory scenario
    #: multiplies a small request up to three times; it must fit).
    max_task_memory_gb: float
    #: How long a first task may take to start (a cold machine boots).
    start_timeout: float
    #: Whether ``kill_task_process`` can reach the machines' processes (a real cloud
    #: may not let a test do that; the killed-worker scenario is then skipped).
    can_kill_task_processes: bool

    def kill_task_process(self, marker: str) -> bool:
        """SIGKILL the process of a running task that named itself ``marker``
        (``scenario_tasks.mark_process``); False if no such process is visible."""
        ...

    def task_process_exists(self, marker: str) -> bool:
        """Whether a process named ``marker`` still runs."""
        ...

    def launched(self) -> set[str]:
        """Every machine or agent this host has started so far (ids)."""
        ...

    def leftovers(self) -> list[str]:
        """What is left running or held that the host does not keep on purpose (its warm
        pool is fine): unfinished jobs, queues, allocations, stray processes. Empty is
        the goal."""
        ...

    def close(self) -> None:
        """End of the module: wait for the host to wind down by itself (idle timeouts),
        then check nothing at all is left; raise AssertionError if something is."""
        ...


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def unfinished_jobs(host: Host) -> list[str]:
    """Jobs the host still records as queued or running."""
    records = portal.call(host.list_jobs(limit=1000))
    return [f"job {r.job_id} is {r.state}" for r in records if r.state in UNFINISHED]


def job_ids(host: Host) -> set[str]:
    return {r.job_id for r in portal.call(host.list_jobs(limit=1000))}


# -- processes, by the name a task gave itself ----------------------------------------


def _processes_named(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as comm:
                if comm.read().strip() == marker:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:100]
    except psutil.Error:
        return "gone"


def kill_processes_named(marker: str) -> bool:
    """SIGKILL every process named ``marker``; a host's processes in other namespaces
    (the dev cloud's VMs) are visible here too."""
    pids = _processes_named(marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return bool(pids)


# -- LocalHost ------------------------------------------------------------------------


class LocalHostUnderTest:
    """A LocalHost on its own home with a short idle timeout. Its warm pool is the agent
    and its idle workers; anything else with the home in its environment is left over."""

    name = "LocalHost"
    deployment = None
    resources = mc.Resources(logical_cpu=1)
    max_task_memory_gb = 2.0
    start_timeout = 30.0
    can_kill_task_processes = True

    def __init__(self, home: Path, idle_timeout: float = 5.0) -> None:
        self.home = home
        self.host = mc.LocalHost(home=home, idle_timeout=idle_timeout)
        self.idle_timeout = idle_timeout

    def kill_task_process(self, marker: str) -> bool:
        return kill_processes_named(marker)

    def task_process_exists(self, marker: str) -> bool:
        return bool(_processes_named(marker))

    def launched(self) -> set[str]:
        pid = self.host.agent_pid()
        return set() if pid is None else {f"agent {pid}"}

    def _status(self) -> dict[str, Any] | None:
        if self.host.agent_pid() is None:
            return None  # asking would start one
        try:
            return portal.call(self.host.agent_status())
        except Exception:  # it idled out between the two calls
            return None

    def _home_processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["status"]):
            if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            with contextlib.suppress(psutil.Error):
                if process.environ().get(AGENT_HOME_VARIABLE) == str(self.home):
                    found.append(process)
        return found

    def leftovers(self) -> list[str]:
        left = unfinished_jobs(self.host)
        status = self._status()
        if status is None:
            return left
        left += [
            f"task {r['job_id']}/{r['task_id']} runs (pid {r['pid']})" for r in status["running"]
        ]
        # Started by the agent for the home, but neither the agent nor a warm worker:
        # a command's child or a task process that outlived its task.
        pool = {status["pid"], *status["workers"]}
        left += [
            f"process {p.pid} ({_command_line(p)}) outlived its task"
            for p in self._home_processes()
            if p.pid not in pool
        ]
        return left

    def close(self) -> None:
        try:
            wait_for(
                lambda: self.host.agent_pid() is None and not self._home_processes(),
                self.idle_timeout + 20,
                "the agent to idle out and take its workers with it",
            )
        finally:
            self.host.shutdown()


# -- EC2 on the dev cloud ---------------------------------------------------------------


class Ec2DevCloudUnderTest:
    """``AllocEC2Instance`` on the dev cloud (moto + simulated VMs). Its warm pool is the
    running instances with their control queues and registry entries, holding no
    allocation once their jobs end; they end themselves after ``idle_timeout``."""

    name = "AllocEC2Instance on the dev cloud"
    resources = mc.Resources(logical_cpu=1, memory_gb=1, max_eviction_rate=0)
    max_task_memory_gb = 8.0
    start_timeout = 150.0
    #: The simulated VMs' processes are this machine's, in other namespaces.
    can_kill_task_processes = True

    def __init__(
        self,
        cloud: Any,
        region: str,
        deployment: mc.Deployment,
        idle_timeout: float,
    ) -> None:
        import boto3

        from meadow_core.clouds.aws.host import AllocEC2Instance
        from meadow_core.clouds.aws.registry import DynamoRegistry

        self.cloud = cloud
        self.region = region
        self.idle_timeout = idle_timeout
        self.deployment = deployment
        self.host = AllocEC2Instance(region_name=region, idle_timeout=idle_timeout)
        self.ec2 = boto3.client("ec2", region_name=region)
        self.sqs = boto3.client("sqs", region_name=region)
        self.registry = DynamoRegistry(boto3.client("dynamodb", region_name=region))

    def kill_task_process(self, marker: str) -> bool:
        return kill_processes_named(marker)

    def task_process_exists(self, marker: str) -> bool:
        return bool(_processes_named(marker))

    def _instances(self, states: tuple[str, ...]) -> dict[str, str]:
        reservations = self.ec2.describe_instances(
            Filters=[
                {"Name": "tag:meadow:managed", "Values": ["true"]},
                {"Name": "instance-state-name", "Values": list(states)},
            ]
        )["Reservations"]
        return {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}

    def launched(self) -> set[str]:
        every = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")
        return set(self._instances(every))

    def _queues(self, *prefixes: str) -> list[str]:
        urls: list[str] = []
        for prefix in prefixes:
            urls += self.sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
        return [url.rsplit("/", 1)[-1] for url in urls]

    def leftovers(self) -> list[str]:
        from meadow_core.clouds.aws import names

        left = unfinished_jobs(self.host)
        left += [
            f"queue {q}" for q in self._queues(names.JOB_QUEUE_PREFIX, names.RESULT_QUEUE_PREFIX)
        ]
        left += [
            f"instance {r.instance_id} still holds {sorted(r.allocations)}"
            for r in self.registry.list()
            if r.allocations
        ]
        running = self._instances(("pending", "running"))
        left += [
            f"VM {vm} runs for an ended instance" for vm in self.cloud.vms() if vm not in running
        ]
        return left

    def diagnosis(self) -> str:
        parts = []
        for record in self.registry.list():
            parts.append(f"registry: {record.instance_id} {record.state} {record.allocations}")
        for vm in self.cloud.vms():
            for log in (self.cloud.state_dir / "vms" / vm / "fs" / "var-lib-meadow").glob("*.log"):
                parts.append(f"--- {vm} {log.name}\n{log.read_text()[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        from meadow_core.clouds.aws import names

        def wound_down() -> bool:
            return not (
                self._instances(("pending", "running", "shutting-down"))
                or self.cloud.vms()
                or self._queues(*names.QUEUE_PREFIXES)
                or self.registry.list()
            )

        try:
            wait_for(wound_down, self.idle_timeout + 90, "the instances to idle out and end")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.diagnosis()}") from None


def build_deployment(requirements: Path) -> mc.Deployment:
    """This checkout as a code snapshot in an environment built from ``requirements``."""
    return asyncio.run(
        mc.Deployment.mirror_local(
            interpreter=mc.PipRequirementsFile(str(requirements)),
            additional_sys_paths=[str(REPO_ROOT)],
            include_sys_path=False,
        )
    )
