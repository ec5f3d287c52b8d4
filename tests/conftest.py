"""Session-wide guard: no agent or worker started by the tests may outlive them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psutil
import pytest

from meadow_core.agent.processes import AGENT_HOME_VARIABLE


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
