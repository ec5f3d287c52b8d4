"""Deployments from git as Meadowrun's ``DeploymentSuite`` uses them: a repository at a
pinned commit with ``path_to_source``, run in the full checkout."""

from __future__ import annotations

import asyncio
import os
import sys

from compat_repo import GitRepo

from meadow_core import (
    Deployment,
    LocalHost,
    run_command,
    run_function,
    run_map,
    run_map_as_completed,
)


def test_git_repo_commit_path_to_source_runs_in_the_full_checkout(
    host: LocalHost, test_repo: GitRepo
) -> None:
    deployment = Deployment.git_repo(
        test_repo.url, commit=test_repo.pinned, path_to_source="example_package"
    )

    def remote_function(arg: str) -> tuple[str, str, bool, bool]:
        import importlib

        example = importlib.import_module("example")  # path_to_source is on sys.path
        with open("example_package/test.txt", encoding="utf-8") as f:  # the checkout is cwd
            data = f.read()
        return (
            example.join_strings("hello", arg),
            data,
            os.path.isfile(".settings"),
            (os.path.isfile("example_package/example.py")),
        )

    async def main() -> None:
        expected = [("hello, foo", "Hello world!", True, True)] * 1
        assert [await run_function(lambda: remote_function("foo"), host, None, deployment)] == (
            expected
        )
        assert await run_map(remote_function, ["foo"], host, None, deployment) == expected
        results = [
            r.result_or_raise()
            async for r in await run_map_as_completed(
                remote_function, ["foo"], host, None, deployment
            )
        ]
        assert results == expected
        completion = await run_command(
            f"{sys.executable} example_package/main.py", host, None, deployment
        )
        assert "cwd has example_package: True" in completion.log
        assert "dotfile present" in completion.log

    asyncio.run(main())
