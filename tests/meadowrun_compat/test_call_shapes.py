"""Every ``run_*`` call shape of Meadowrun's suites (``_test_all_entry_points``),
spelled as a Meadowrun user spells it, on LocalHost."""

from __future__ import annotations

import asyncio
import sys

import pytest

from meadow_core import (
    Deployment,
    InvalidRequestError,
    LocalHost,
    Resources,
    TaskResult,
    get_job,
    list_jobs,
    run_command,
    run_function,
    run_map,
    run_map_as_completed,
)


def test_all_entry_points_as_meadowrun_calls_them(host: LocalHost) -> None:
    def remote_function(arg: str) -> str:
        return f"hello, {arg}"

    args = ["foo", "bar", "baz"]
    expected = [remote_function(a) for a in args]
    resources = Resources(logical_cpu=1, memory_gb=0.5)

    async def main() -> None:
        deployment = Deployment.mirror_local()  # an Awaitable[Deployment], as on Meadowrun
        assert await run_function(lambda: remote_function("foo"), host, resources, deployment) == (
            "hello, foo"
        )
        completion = await run_command(
            f"{sys.executable} --version", host, resources, Deployment.mirror_local()
        )
        assert "Python" in completion.log
        assert await run_map(remote_function, args, host, resources, Deployment.mirror_local()) == (
            expected
        )
        seen = []
        async for result in await run_map_as_completed(
            remote_function, args, host, resources, Deployment.mirror_local()
        ):
            seen.append(result.result_or_raise())
        assert set(seen) == set(expected)
        # Meadow's own spelling keeps working.
        meadow_style = [
            r.result_or_raise()
            async for r in run_map_as_completed(remote_function, args, host, resources)
        ]
        assert set(meadow_style) == set(expected)

    asyncio.run(main())


def test_awaiting_run_map_as_completed_validates_and_submits_before_iterating(
    host: LocalHost,
) -> None:
    def double(x: int) -> int:
        return 2 * x

    async def main() -> None:
        with pytest.raises(InvalidRequestError, match="characters"):
            await run_map_as_completed(double, "abc", host)  # type: ignore[arg-type]
        before = {job.job_id for job in await list_jobs(host)}
        results = await run_map_as_completed(double, [1, 2, 3], host, job_id="compat-awaited")
        jobs = {job.job_id for job in await list_jobs(host)} - before
        assert jobs == {"compat-awaited"}  # submitted by the await, nothing iterated yet
        collected: list[TaskResult[int]] = [r async for r in results]
        assert sorted(r.result_or_raise() for r in collected) == [2, 4, 6]
        assert [r async for r in await run_map_as_completed(double, [], host)] == []

    asyncio.run(main())


def test_map_as_completed_with_retries_reports_the_last_attempt(host: LocalHost) -> None:
    def fail(x: int) -> None:
        raise Exception("intentional failure")

    async def main() -> list[TaskResult[None]]:
        return [
            r
            async for r in await run_map_as_completed(
                fail,
                [1, 2, 3, 4],
                host,
                Resources(logical_cpu=1, memory_gb=0.5),
                deployment=Deployment.preinstalled_interpreter("MEADOW_INTERPRETER"),
                num_concurrent_tasks=2,
                max_num_task_attempts=3,
            )
        ]

    actual = asyncio.run(main())
    assert len(actual) == 4
    for result in actual:
        assert not result.is_success
        assert result.exception is not None
        assert result.attempt == 3
        assert result.state == "PYTHON_EXCEPTION"


def test_an_awaited_map_that_is_closed_unread_is_cancelled(host: LocalHost) -> None:
    """Awaiting submits; giving the results up (``aclose``) cancels the job, as
    stopping an ``async for`` early does."""

    def slow(x: int) -> int:
        import time

        time.sleep(30)
        return x

    async def main() -> str:
        results = await run_map_as_completed(slow, [1, 2], host, job_id="compat-abandoned")
        await results.aclose()
        for _ in range(100):
            state = (await get_job("compat-abandoned", host)).state
            if state != "running" and state != "queued":
                return state
            await asyncio.sleep(0.1)
        return state

    assert asyncio.run(main()) == "cancelled"
