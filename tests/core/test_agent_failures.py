"""Failures inside the agent become answers: a task the agent cannot see through fails
with an error naming the cause, its slot is freed, and outcomes whose commit failed are
delivered and committed again later. Nothing hangs."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meadow_core import (
    InvalidRequestError,
    LocalHost,
    TaskException,
    get_job_sync,
    list_jobs_sync,
    run_command_sync,
    run_function_sync,
)
from meadow_core.errors import CorruptDatabaseError
from meadow_core.protocol import ErrorKind


def big_result(size: int) -> bytes:
    return b"x" * size


def forty_two() -> int:
    return 42


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LocalHost]:
    h = LocalHost(home=tmp_path / "home", idle_timeout=30)
    yield h
    h.shutdown()


def test_a_nul_byte_in_a_command_is_refused_before_anything_runs(host: LocalHost) -> None:
    with pytest.raises(InvalidRequestError, match=r"argument 1 .* NUL byte"):
        run_command_sync(["echo", "a\x00b"], host)
    assert host.agent_pid() is None, "nothing was started for a request that cannot run"


def test_a_result_that_cannot_be_stored_fails_the_task_and_frees_its_slot(
    host: LocalHost,
) -> None:
    run_function_sync(forty_two, host)  # the agent and its store exist
    job_id = "unstorable-result"
    # Where the agent would store the large value is taken by a file: storing fails.
    (host.place.home / "store" / "results").mkdir(parents=True, exist_ok=True)
    (host.place.home / "store" / "results" / job_id).write_text("in the way")
    started = time.monotonic()
    with pytest.raises(TaskException) as raised:
        run_function_sync(big_result, host, args=[200_000], job_id=job_id)
    assert raised.value.kind == ErrorKind.AGENT_ERROR
    assert f"results/{job_id}/0.1" in str(raised.value), "the message names the path"
    assert time.monotonic() - started < 30
    assert get_job_sync(job_id, host).state == "failed"
    # The task's CPU was given back: the next calls run at once, on both slots.
    assert [run_function_sync(forty_two, host) for _ in range(3)] == [42, 42, 42]


def _require_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: the full-disk test needs a tmpfs mount")
        pytest.skip("needs root to mount a small tmpfs")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    _require_root()
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_answers_the_caller_and_heals_when_space_returns(small_disk: Path) -> None:
    host = LocalHost(home=small_disk / "home", idle_timeout=30)
    try:
        assert run_function_sync(forty_two, host) == 42
        assert run_function_sync(big_result, host, args=[10]) == b"x" * 10  # stored once
        # Fill the disk but for what a submission writes: the agent's large result, and
        # maybe its commit, find no room.
        stats = os.statvfs(small_disk)
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - 256 * 1024))
        started = time.monotonic()
        with pytest.raises(TaskException) as raised:
            run_function_sync(big_result, host, args=[500_000], job_id="on-a-full-disk")
        assert raised.value.kind == ErrorKind.AGENT_ERROR
        assert "No space left" in str(raised.value)
        assert time.monotonic() - started < 30, "a full disk costs an answer, not a hang"
        filler.unlink()
        # Space is back: the agent serves new calls and commits what it had kept.
        assert run_function_sync(forty_two, host) == 42
        deadline = time.monotonic() + 20
        while get_job_sync("on-a-full-disk", host).state != "failed":
            assert time.monotonic() < deadline, "the kept outcome was never committed"
            time.sleep(0.2)
        assert all(job.state in ("succeeded", "failed") for job in list_jobs_sync(host))
    finally:
        host.shutdown()


def test_a_damaged_database_names_the_file_and_the_way_out(host: LocalHost) -> None:
    """A home's meadow.db overwritten by garbage (a bad copy, a file system crash): the
    caller gets an error naming the file and the commands to start afresh, not SQLite's
    bare "file is not a database"; following them works."""
    assert run_function_sync(forty_two, host) == 42
    host.shutdown()
    database = host.place.home / "meadow.db"
    for leftover in ("meadow.db-wal", "meadow.db-shm"):
        (host.place.home / leftover).unlink(missing_ok=True)
    database.write_bytes(b"\xff" * database.stat().st_size)  # SQLite no longer knows it
    with pytest.raises(CorruptDatabaseError) as error:
        run_function_sync(forty_two, LocalHost(home=host.place.home, idle_timeout=30))
    message = str(error.value)
    assert str(database) in message and "meadow agent stop" in message
    database.rename(database.with_suffix(".db.damaged"))
    for leftover in ("meadow.db-wal", "meadow.db-shm"):
        (host.place.home / leftover).unlink(missing_ok=True)
    assert run_function_sync(forty_two, LocalHost(home=host.place.home, idle_timeout=30)) == 42
