"""Fixtures of the Meadowrun compatibility suite: one LocalHost per module on its own
home (shut down afterwards), and a local git repository shaped like the one
Meadowrun's suites check out (``meadowdata/test_repo``), built here at known commits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from compat_repo import GitRepo, git

from meadow_core import LocalHost


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHost]:
    h = LocalHost(home=tmp_path_factory.mktemp("meadow"), idle_timeout=30)
    try:
        yield h
    finally:
        h.shutdown()


@pytest.fixture
def test_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GitRepo:
    """``example_package/`` (a module, a data file, a script), a dotfile at the root, and
    a module only the remote side can import; main moves after the pinned commit."""
    monkeypatch.setenv("MEADOW_GIT_CACHE", str(tmp_path / "git-cache"))
    bare = tmp_path / "test_repo.git"
    git("init", "--bare", "--initial-branch=main", str(bare), cwd=tmp_path)
    work = tmp_path / "work"
    git("clone", "--quiet", str(bare), str(work), cwd=tmp_path)
    git("config", "user.email", "compat@example.invalid", cwd=work)
    git("config", "user.name", "compat", cwd=work)
    package = work / "example_package"
    package.mkdir()
    (package / "example.py").write_text("def join_strings(a, b):\n    return f'{a}, {b}'\n")
    (package / "remote_only.py").write_text(
        "class OnlyHere:\n    pass\n\n\ndef make(_):\n    return OnlyHere()\n"
    )
    (package / "test.txt").write_text("Hello world!")
    (package / "main.py").write_text(
        "import os\n"
        "print('cwd has example_package:', os.path.isdir('example_package'))\n"
        "print(open('.settings').read().strip())\n"
    )
    (work / ".settings").write_text("dotfile present\n")
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "pinned", cwd=work)
    pinned = git("rev-parse", "HEAD", cwd=work)
    (package / "test.txt").write_text("changed on main")
    git("commit", "--quiet", "-am", "moved on", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return GitRepo(f"file://{bare}", pinned)
