"""Fixtures: one Meadow agent for the session that cannot see any Dagster instance.

The agent (and so every worker that runs a step) is started in its own mount
namespace in which the directory holding all test instances is covered by an empty
tmpfs. The orchestrating test process writes the instances there as usual; a step
that tried to open the orchestrator's storage would find nothing. This is what makes
the no-shared-database tests honest on one machine.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

import meadow_core
from meadow_core import LocalHost

TESTS_DIR = Path(__file__).resolve().parent


def _start_hidden_agent(home: Path, hidden: Path) -> None:
    """Start the home's agent in a mount namespace where ``hidden`` is an empty tmpfs."""
    package_root = str(Path(meadow_core.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["MEADOW_DAGSTER_TEST_HIDDEN_DIR"] = str(hidden)
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "-r", "--mount"]
    script = (
        'mount -t tmpfs -o size=1m meadow-hidden "$1" && '
        'exec "$2" -m meadow_core.agent --home "$3" --idle-timeout 600 --daemonize'
    )
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "agent.log", "ab") as log:
        subprocess.run(
            [*unshare, "sh", "-c", script, "sh", str(hidden), sys.executable, str(home)],
            check=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


@pytest.fixture(scope="session")
def meadow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Meadow home whose agent runs isolated from ``instances_dir``; shut down at the end."""
    root = tmp_path_factory.mktemp("meadow-dagster")
    home = root / "meadow"
    hidden = root / "instances"
    hidden.mkdir()
    saved = {"MEADOW_HOME": os.environ.get("MEADOW_HOME")}
    os.environ["MEADOW_HOME"] = str(home)
    _start_hidden_agent(home, hidden)
    host = LocalHost(home=home, idle_timeout=600)
    # Wait for the isolated agent itself: a LocalHost call made before it listens would
    # start a second, unisolated agent that takes over when the first one stops.
    deadline = time.monotonic() + 30
    pid = host.agent_pid()
    while pid is None and time.monotonic() < deadline:
        time.sleep(0.02)
        pid = host.agent_pid()
    assert pid is not None, "the isolated Meadow agent did not start; see agent.log"
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    try:
        yield home
    finally:
        host.shutdown()
        time.sleep(0.3)
        takeover = host.agent_pid()  # an agent started behind our back would show here
        if takeover is not None:
            host.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert takeover is None, f"a second Meadow agent ({takeover}) served the test home"


@pytest.fixture
def host(meadow_home: Path) -> LocalHost:
    return LocalHost(home=meadow_home, idle_timeout=600)


@pytest.fixture
def instances_dir(meadow_home: Path) -> Path:
    return meadow_home.parent / "instances"


@pytest.fixture(scope="session")
def work_dir(meadow_home: Path) -> Path:
    """A directory the remote ops may use (they find it through the env).

    One for the session: equal environments share warm Meadow workers, so the tests
    pay Dagster's import once rather than once per test.
    """
    path = meadow_home.parent / "work"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def instance(
    request: pytest.FixtureRequest, instances_dir: Path, work_dir: Path
) -> Iterator[DagsterInstance]:
    """A persistent SQLite instance in a directory the Meadow side cannot see."""
    path = instances_dir / request.node.name.replace("[", "_").replace("]", "_")
    path.mkdir()
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.local_temp(str(path)) as inst:
        yield inst


@pytest.fixture(autouse=True)
def _tests_importable() -> None:
    # The jobs module must be importable by module name on both sides.
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
