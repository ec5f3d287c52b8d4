"""Large results stream through files: a result past the socket's 32-bit frame length
passes, each side holds about one copy of it (not two or three), and a task cannot get
another file adopted as its result."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from meadow_core import LocalHost, TaskException, run_function_sync

GIB = 1 << 30
INLINE_LIMIT = 64 * 1024
HERE = Path(__file__).resolve().parent


def sized(size: int) -> bytes:
    return b"x" * size


def names_another_file_as_its_result(path: str) -> bytes:
    """What hostile task code could do: it runs inside the worker, so it can make the
    worker report any path as the result file it wrote."""
    worker = sys.modules["__main__"]  # python -m meadow_core.agent.worker
    worker._SpillingWriter.finish = lambda self: {"value_file": path}
    return b"x" * (INLINE_LIMIT + 1)


def peak_rss_gib(pid: int | str) -> float:
    """A process's peak resident set (VmHWM), in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / (1 << 20)
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LocalHost]:
    h = LocalHost(home=tmp_path / "home", idle_timeout=30)
    yield h
    h.shutdown()


def _spill_files(home: Path) -> list[Path]:
    return list((home / "scratch" / "results").glob("*"))


def test_a_result_over_4_gib_passes_with_one_copy_on_each_side(tmp_path: Path) -> None:
    """4 GiB + 1 byte, more than a frame length can say. The worker pickles it into a
    file the agent adopts into the store, and the caller unpickles from that file: the
    caller peaks near one copy (not the pickle plus the value), the agent far below."""
    size = 4 * GIB + 1
    home = tmp_path / "home"
    caller = textwrap.dedent(
        f"""
        import functools, json, sys
        sys.path.insert(0, {str(HERE.parent.parent)!r})
        from meadow_core import LocalHost, run_function_sync
        from tests.core.test_large_results import peak_rss_gib, sized
        host = LocalHost(home={str(home)!r}, idle_timeout=30)
        try:
            value = run_function_sync(functools.partial(sized, {size}), host=host)
            ok = len(value) == {size} and value[-1:] == b"x"
            del value
            agent = peak_rss_gib(host.agent_pid())
        finally:
            host.shutdown()
        peaks = {{"caller": peak_rss_gib("self"), "agent": agent}}
        print(json.dumps({{"ok": ok, **peaks}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", caller], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"], "the value came back changed"
    assert report["caller"] < 4.5, report  # one copy of 4 GiB, plus Python
    assert report["agent"] < 0.5, report  # the agent never holds the value
    assert not _spill_files(home), "the adopted file left the spill folder"


def test_a_result_just_over_the_inline_limit_round_trips(host: LocalHost) -> None:
    value = run_function_sync(functools.partial(sized, INLINE_LIMIT + 1), host=host)
    assert value == b"x" * (INLINE_LIMIT + 1)
    assert not _spill_files(host.place.home)


@pytest.mark.parametrize("named", ["/etc/passwd", "{spill}/../../meadow.db"])
def test_a_task_cannot_get_another_file_adopted_as_its_result(host: LocalHost, named: str) -> None:
    path = named.format(spill=host.place.home / "scratch" / "results")
    with pytest.raises(TaskException, match="as its result file"):
        run_function_sync(functools.partial(names_another_file_as_its_result, path), host=host)
    assert Path("/etc/passwd").exists() and (host.place.home / "meadow.db").exists()
