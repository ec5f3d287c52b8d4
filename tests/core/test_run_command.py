"""run_command on LocalHost: exit codes, output, timeouts, leftovers and environment."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import psutil
import pytest

from meadow_core import (
    Deployment,
    InvalidRequestError,
    JobCompletion,
    JobHandle,
    LocalHost,
    TaskException,
    read_task_log_sync,
    run_command,
    run_command_sync,
)


def _sleeps(duration: str, since: float) -> list[psutil.Process]:
    """Live ``sleep <duration>`` processes started after ``since``."""
    found = []
    for process in psutil.process_iter(["cmdline", "create_time", "status"]):
        info = process.info
        if (
            info["cmdline"] == ["sleep", duration]
            and info["create_time"] >= since - 1
            and info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(process)
    return found


def _wait_no_sleeps(duration: str, since: float, timeout: float = 5.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = _sleeps(duration, since)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _sleeps(duration, since)
    return left


def _unique_duration() -> str:
    """A sleep duration no other process on this machine is likely to use."""
    return f"30.{random.randrange(10**6):06d}"


def test_echo(host: LocalHost) -> None:
    completion = run_command_sync("echo hello", host=host)
    assert isinstance(completion, JobCompletion)
    assert completion.return_code == 0
    assert completion.outcome == "succeeded"
    assert "hello" in completion.log
    assert read_task_log_sync(completion.job_id, 0, host) == completion.log


def test_list_form_keeps_arguments_whole(host: LocalHost) -> None:
    completion = run_command_sync(["printf", "[%s]\n", "a b", "c"], host=host)
    assert "[a b]" in completion.log and "[c]" in completion.log


def test_string_form_is_split_like_a_shell(host: LocalHost) -> None:
    completion = run_command_sync("printf '[%s]\\n' 'x y' z", host=host)
    assert "[x y]" in completion.log and "[z]" in completion.log


def test_failing_command_raises_with_its_completion(host: LocalHost) -> None:
    with pytest.raises(TaskException) as info:
        run_command_sync(["sh", "-c", "echo oops; exit 3"], host=host)
    completion = info.value.completion  # type: ignore[attr-defined]
    assert completion.return_code == 3
    assert "oops" in completion.log
    assert completion.outcome == "failed"
    assert "3" in info.value.remote_message


def test_failing_command_with_check_false_returns_completion(host: LocalHost) -> None:
    completion = run_command_sync(["sh", "-c", "echo oops; exit 3"], host=host, check=False)
    assert completion.return_code == 3
    assert "oops" in completion.log
    assert completion.outcome == "failed"


def test_stderr_is_in_the_log(host: LocalHost) -> None:
    completion = run_command_sync(["sh", "-c", "echo to-stderr >&2"], host=host)
    assert "to-stderr" in completion.log


def test_timeout_kills_the_command_and_its_children(host: LocalHost) -> None:
    duration = _unique_duration()
    since = time.time()
    start = time.monotonic()
    with pytest.raises(TaskException) as info:
        run_command_sync(
            ["sh", "-c", f"sleep {duration} & sleep {duration}"],
            host=host,
            timeout_seconds=0.5,
        )
    elapsed = time.monotonic() - start
    assert info.value.remote_type == "meadow.TaskTimeout"
    assert elapsed < 10, f"the timeout took {elapsed:.1f}s"
    assert _wait_no_sleeps(duration, since) == []


def test_background_children_do_not_outlive_the_command(host: LocalHost) -> None:
    """The command ends when its main process exits; children it left behind are killed."""
    for _ in range(3):  # whether the bug shows depends on timing, so try a few times
        duration = _unique_duration()
        since = time.time()
        start = time.monotonic()
        try:
            completion = run_command_sync(
                ["sh", "-c", f"sleep {duration} & echo started"], host=host, timeout_seconds=8
            )
        except TaskException as exc:
            pytest.fail(
                "a command whose shell exited at once, leaving a background child, did not "
                f"finish until it timed out after {time.monotonic() - start:.1f}s: "
                f"{exc.remote_type}"
            )
        assert completion.return_code == 0 and "started" in completion.log
        assert time.monotonic() - start < 5
        assert _wait_no_sleeps(duration, since) == []


def test_missing_executable_is_named(host: LocalHost) -> None:
    name = f"no-such-program-{uuid.uuid4().hex[:8]}"
    with pytest.raises(TaskException) as info:
        run_command_sync([name, "--help"], host=host)
    assert name in str(info.value)


def test_empty_command_is_rejected(host: LocalHost) -> None:
    with pytest.raises(InvalidRequestError):
        run_command_sync([], host=host)
    with pytest.raises(InvalidRequestError):
        run_command_sync("", host=host)


def test_environment_variables_from_deployment(host: LocalHost) -> None:
    async def main() -> JobCompletion[None]:
        deployment = await Deployment.mirror_local(environment_variables={"FOO": "bar"})
        return await run_command(["sh", "-c", "echo FOO=$FOO"], host=host, deployment=deployment)

    completion = asyncio.run(main())
    assert "FOO=bar" in completion.log
    # The sync twin accepts the un-awaited coroutine as well.
    completion = run_command_sync(
        ["sh", "-c", "echo FOO=$FOO"],
        host=host,
        deployment=Deployment.mirror_local(environment_variables={"FOO": "baz"}),
    )
    assert "FOO=baz" in completion.log


def test_wait_for_result_false(host: LocalHost) -> None:
    handle = run_command_sync("echo later", host=host, wait_for_result=False)
    assert isinstance(handle, JobHandle)
    completion = handle.wait_sync()
    assert completion.return_code == 0 and "later" in completion.log
    assert handle.status_sync().state == "succeeded"


def test_long_output_lines_are_kept_whole(host: LocalHost) -> None:
    """A 200 kB line (say one JSON record) is one line in the stored log, not several."""
    import sys

    line = "y" * 200_000
    program = "print('y' * 200_000); print('done')"
    completion = run_command_sync([sys.executable, "-c", program], host=host)
    for log in (completion.log, read_task_log_sync(completion.job_id, 0, host)):
        lengths = [len(piece) for piece in log.splitlines()]
        assert lengths == [len(line), len("done")], f"line lengths in the log: {lengths}"
        assert log.splitlines() == [line, "done"]


def test_job_id_of_a_function_cannot_be_reused_for_a_command(host: LocalHost) -> None:
    from meadow_core import deterministic_job_id, run_function_sync

    job_id = deterministic_job_id("command-vs-function", uuid.uuid4().hex)
    assert run_function_sync(abs, host=host, args=(-3,), job_id=job_id) == 3
    with pytest.raises(InvalidRequestError, match=job_id):
        run_command_sync("echo hi", host=host, job_id=job_id)
