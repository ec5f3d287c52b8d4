"""Session-wide fixtures: the guard that no agent or worker outlives the tests, and the
one moto server and dev cloud that the AWS tests and the host conformance suite share
(started only when a test asks for them)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from meadow_devcloud.ec2 import DevCloud
from meadow_devcloud.ec2.moto import MotoServer
from meadow_devcloud.vm import netns

from meadow_core.agent.processes import AGENT_HOME_VARIABLE
from tests.devcloud_guard import require_vm_host


def meadow_processes_under(base: str) -> list[psutil.Process]:
    """Agents (by their --home argument) and task processes (by their environment)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        try:
            home = process.environ().get(AGENT_HOME_VARIABLE, "")
        except psutil.Error:
            home = ""
        if ("meadow_core.agent" in cmdline and base in cmdline) or home.startswith(base):
            found.append(process)
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = str(tmp_path_factory.getbasetemp())
    yield
    deadline = time.monotonic() + 15
    left = meadow_processes_under(base)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = meadow_processes_under(base)
    for process in left:
        process.kill()
    assert not left, f"processes left behind by the tests: {[p.info['cmdline'] for p in left]}"


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """`python -m moto.server` on a free loopback port, with moto's validation turned on."""
    log = Path(tmp_path_factory.mktemp("moto")) / "moto.log"
    server = MotoServer.start(log_path=log)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vm_visible_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host directory every dev cloud VM sees (read-only): tests drop gate files here
    to hold a task at a known point instead of guessing how long a step takes."""
    return tmp_path_factory.mktemp("vm-visible")


@pytest.fixture(scope="session")
def devcloud(
    moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory, vm_visible_dir: Path
) -> Iterator[DevCloud]:
    """The VM simulator on the session's moto: boots every Meadow-tagged instance.

    Offers `.env`, `.vms()`, `.console(id)`, `.interrupt(id)`, `.kill(id)`. Use it with
    `aws_env` (which resets moto, so the previous test's VMs are destroyed).
    """
    require_vm_host()
    # The tests' user data runs this venv's Python (boto3 inside); wherever the checkout
    # lives (say under /tmp, which each VM has its own of), the VMs must see it.
    cloud = DevCloud.start(
        tmp_path_factory.mktemp("devcloud"),
        moto_url=moto_server.url,
        shared_paths=(sys.prefix, str(vm_visible_dir)),
    )
    try:
        yield cloud
    finally:
        cloud.stop()
        leftovers = netns.existing(cloud.prefix)
        assert not leftovers, f"dev cloud left network namespaces: {leftovers}"
