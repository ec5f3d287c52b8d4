"""``MACHINE_CACHE_FOLDER``: written by one job, found by the next on the same machine
(Meadowrun's ``_test_data_file_and_machine_cache``)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from compat_repo import GitRepo

import meadow_core
from meadow_core import Deployment, LocalHost, run_function, run_map


def test_git_repo_data_file_and_machine_cache(host: LocalHost, test_repo: GitRepo) -> None:
    """Meadowrun's ``_test_data_file_and_machine_cache``: the folder captured on the
    caller is writable in the task (on LocalHost, the caller's value is the machine's)."""
    machine_cache_folder = meadow_core.MACHINE_CACHE_FOLDER
    name = f"compat-{uuid.uuid4().hex}"

    def remote_function(_: object) -> str:
        with open(os.path.join(machine_cache_folder, name), "w", encoding="utf-8") as f:
            f.write("test")
        with open("example_package/test.txt", encoding="utf-8") as f:
            return f.read()

    deployment = Deployment.git_repo(
        test_repo.url, commit=test_repo.pinned, path_to_source="example_package"
    )
    try:
        assert (
            asyncio.run(run_map(remote_function, [None] * 3, host, None, deployment))
            == ["Hello world!"] * 3
        )
    finally:
        Path(machine_cache_folder, name).unlink(missing_ok=True)


def test_machine_cache_folder_keeps_files_between_jobs(host: LocalHost) -> None:
    """One job leaves a file in the folder (read in the task) and the next finds it."""
    name = f"compat-{uuid.uuid4().hex}"

    def write(token: str) -> str:
        import meadow_core

        with open(os.path.join(meadow_core.MACHINE_CACHE_FOLDER, name), "w") as f:
            f.write(token)
        return meadow_core.MACHINE_CACHE_FOLDER

    def read() -> str:
        import meadow_core

        with open(os.path.join(meadow_core.MACHINE_CACHE_FOLDER, name)) as f:
            return f.read()

    try:
        folder = asyncio.run(run_function(write, host, args=["from job one"]))
        assert asyncio.run(run_function(read, host)) == "from job one"
        # The same folder on the caller, on LocalHost; private to the user.
        assert folder == meadow_core.MACHINE_CACHE_FOLDER
        assert os.stat(folder).st_mode & 0o077 == 0
    finally:
        Path(meadow_core.MACHINE_CACHE_FOLDER, name).unlink(missing_ok=True)
