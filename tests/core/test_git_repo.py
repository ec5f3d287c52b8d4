"""Deployment.git_repo against real git repositories (local bare repositories)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meadow_core import (
    Deployment,
    InvalidRequestError,
    LocalHost,
    PipRequirementsFile,
    run_function_sync,
    run_map_sync,
)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A bare repository with one commit on main, and a working clone to push from."""
    monkeypatch.setenv("MEADOW_GIT_CACHE", str(tmp_path / "git-cache"))
    bare = tmp_path / "repo.git"
    git("init", "--bare", "--initial-branch=main", str(bare), cwd=tmp_path)
    work = tmp_path / "work"
    git("clone", "--quiet", str(bare), str(work), cwd=tmp_path)
    git("config", "user.email", "t@example.invalid", cwd=work)
    git("config", "user.name", "t", cwd=work)
    (work / "src" / "gitpkg").mkdir(parents=True)
    (work / "src" / "gitpkg" / "__init__.py").write_text("")
    (work / "src" / "gitpkg" / "version.py").write_text(
        "import os\n\ndef which(_=None):\n    return open('VERSION').read().strip(), os.getcwd()\n"
    )
    (work / "VERSION").write_text("one\n")
    (work / "requirements.txt").write_text("six==1.16.0\n")
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "one", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return f"file://{bare}", work


def push_version(work: Path, version: str) -> str:
    (work / "VERSION").write_text(f"{version}\n")
    git("commit", "--quiet", "-am", version, cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def test_a_branch_is_resolved_once_so_every_task_runs_one_commit(
    host: LocalHost, repo: tuple[str, Path]
) -> None:
    url, work = repo
    deployment = Deployment.git_repo(url, branch="main", path_to_source="src")
    push_version(work, "two")  # the branch moves after the deployment was made
    results = run_map_sync("gitpkg.version.which", [1, 2, 3], host, deployment=deployment)
    assert {r[0] for r in results} == {"one"}
    # The task ran in the repository root of the shipped commit.
    assert results[0][1].startswith(str(host.place.home / "code"))


def test_a_commit_and_an_interpreter_from_the_repo(host: LocalHost, repo: tuple[str, Path]) -> None:
    url, work = repo
    second = push_version(work, "two")
    push_version(work, "three")
    deployment = Deployment.git_repo(
        url,
        commit=second,
        path_to_source="src",
        interpreter=PipRequirementsFile("requirements.txt"),
    )
    assert run_function_sync("gitpkg.version.which", host, deployment=deployment)[0] == "two"


def test_missing_branch_commit_or_folder_fails_before_anything_runs(
    repo: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = repo
    with pytest.raises(InvalidRequestError, match="branch 'nope' does not exist"):
        Deployment.git_repo(url, branch="nope")
    with pytest.raises(InvalidRequestError, match="commit 'deadbeef' does not exist"):
        Deployment.git_repo(url, commit="deadbeef")
    with pytest.raises(InvalidRequestError, match="path_to_source"):
        Deployment.git_repo(url, path_to_source="no/such/dir")
    with pytest.raises(InvalidRequestError, match="cannot fetch"):
        Deployment.git_repo(f"file://{tmp_path}/missing.git")
