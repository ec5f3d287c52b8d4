"""The local trust boundary: only the home's user reaches its agent and its files.

Another local user (``nobody``, through ``setpriv``) must not watch, cancel or stop a
job, and must not pass for the agent; a home another user owns or may write is
refused; a new home and its database are private whatever the umask. These need root
to switch users (CI runs as root)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from meadow_core import AgentUnavailableError, LocalHost, run_function_sync
from meadow_core.errors import UnsafeHomeError
from meadow_core.place import LocalPlace

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike a venv under /root
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _require_root() -> None:
    if os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root with Debian's python3: these tests switch users")
        pytest.skip("needs root (to act as another user) and /usr/bin/python3")


def as_nobody(code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AS_NOBODY, SYSTEM_PYTHON, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


def forty_two() -> int:
    return 42


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LocalHost]:
    _require_root()
    h = LocalHost(home=tmp_path / "home", idle_timeout=30)
    yield h
    h.shutdown()


def test_another_user_cannot_talk_to_the_agent(host: LocalHost) -> None:
    assert run_function_sync(forty_two, host) == 42
    address = host.place.socket_address
    result = as_nobody(
        f"""
        import socket, struct
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect({address!r})
        # A framed msgpack {{"op": "shutdown"}} would stop the agent if it were heard.
        body = bytes([0x81, 0xa2]) + b"op" + bytes([0xa8]) + b"shutdown"
        try:
            s.sendall(struct.pack(">I", len(body)) + body)
            s.settimeout(5)
            print("answer:", s.recv(100))
        except ConnectionError:
            print("answer: b''")  # reset: closed unheard
        """
    )
    assert "answer: b''" in result.stdout, result.stdout + result.stderr  # closed, unheard
    pid = host.agent_pid()
    assert pid is not None, "the agent still runs"
    assert run_function_sync(forty_two, host) == 42
    assert "refused a connection from uid 65534" in host.place.agent_log_path.read_text()


def test_a_process_of_another_user_holding_the_agents_name_is_not_trusted(
    tmp_path: Path,
) -> None:
    _require_root()
    place = LocalPlace(tmp_path / "home")
    squat = f"""
        import socket, time
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind({place.socket_address!r}); s.listen(5)
        print("bound", flush=True)
        conn, _ = s.accept()
        time.sleep(30)
        """
    squatter = subprocess.Popen(
        [*AS_NOBODY, SYSTEM_PYTHON, "-c", textwrap.dedent(squat)],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "bound"
        host = LocalHost(home=place.home, idle_timeout=30)
        with pytest.raises(AgentUnavailableError, match="uid 65534, not yours"):
            run_function_sync(forty_two, host)
    finally:
        squatter.kill()
        squatter.wait()
        LocalHost(home=place.home).shutdown()


def test_a_home_others_can_write_or_own_is_refused(tmp_path: Path) -> None:
    _require_root()
    home = tmp_path / "shared"
    home.mkdir()
    home.chmod(0o777)
    with pytest.raises(UnsafeHomeError, match=f"chmod 700 {home}"):
        LocalPlace(home)
    home.chmod(0o755)
    os.chown(home, NOBODY, NOBODY)
    with pytest.raises(UnsafeHomeError, match="belongs to uid 65534"):
        LocalPlace(home)


def test_a_new_home_and_its_database_are_private_whatever_the_umask(tmp_path: Path) -> None:
    _require_root()
    old = os.umask(0)
    try:
        place = LocalPlace(tmp_path / "fresh" / "home")
        place.queue.list_jobs()
    finally:
        os.umask(old)
    assert stat.S_IMODE(place.home.stat().st_mode) == 0o700
    assert stat.S_IMODE((place.home / "meadow.db").stat().st_mode) == 0o600


def test_the_agent_log_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """Tasks' output and errors reach agent.log: under umask 000 it must still be the
    owner's only (the home is 0700 too, but a file copied out keeps its mode)."""
    home = tmp_path / "home"
    script = (
        "import os, sys; os.umask(0)\n"
        "from meadow_core import LocalHost, run_command_sync\n"
        f"host = LocalHost(home={str(home)!r}, idle_timeout=30)\n"
        "run_command_sync(['true'], host); host.shutdown()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert stat.S_IMODE((home / "agent.log").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "meadow.db").stat().st_mode) == 0o600
