"""Warm workers never run code that changed on disk (issue 17, core bug 2).

LocalHost runs the caller's modules in place and keeps workers warm between jobs, so a
worker holds the modules an earlier job imported. After a user edits one, the next job
must see the edit as a new process would, while unchanged code keeps its warm worker.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from meadow_core import LocalHost, run_function_sync, run_map_sync
from meadow_core.agent.code_watch import CLOCK_SLACK_NS


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder of the user's modules on the caller's ``sys.path`` (so on the workers')."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [n for n, m in sys.modules.items() if _inside(m, folder)]:
        del sys.modules[name]


def _inside(module: ModuleType | None, folder: Path) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file) and Path(file).is_relative_to(folder)


def _write(path: Path, source: str) -> None:
    path.write_text(textwrap.dedent(source))


def _let_settle() -> None:
    """Let written code age past the window in which a worker cannot tell an edit made
    after its import from none (it retires such a worker anyway), as code a user wrote
    before starting a pipeline has: what follows then tests the comparison of files."""
    time.sleep(CLOCK_SLACK_NS / 1e9 + 0.1)


def _unique(stem: str) -> str:
    """A module name no other test's warm worker has imported."""
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def test_an_edited_module_is_seen_by_the_next_job(host: LocalHost, project: Path) -> None:
    name = _unique("steps")
    _write(project / f"{name}.py", "def answer():\n    return 'before the edit'\n")
    _let_settle()
    steps = importlib.import_module(name)
    assert run_function_sync(steps.answer, host=host) == "before the edit"

    # Of another size, so Python's own .pyc check (whole seconds and size) sees it too.
    (project / f"{name}.py").write_text("def answer():\n    return 'after the edit!'\n")
    assert run_function_sync(steps.answer, host=host) == "after the edit!"
    # By dotted name, which the worker imports itself, too.
    assert run_function_sync(f"{name}.answer", host=host) == "after the edit!"


def test_an_edited_helper_of_an_unchanged_function_is_seen(host: LocalHost, project: Path) -> None:
    entry, helper = _unique("entry"), _unique("helper")
    _write(project / f"{helper}.py", "def greeting():\n    return 'hello'\n")
    _write(
        project / f"{entry}.py",
        f"""\
        import {helper}

        def greet(who):
            return {helper}.greeting() + ', ' + who
        """,
    )
    _let_settle()
    greet = importlib.import_module(entry).greet
    assert run_map_sync(greet, ["ada", "bob"], host=host) == ["hello, ada", "hello, bob"]

    (project / f"{helper}.py").write_text("def greeting():\n    return 'bonjour'\n")
    # The same function object (the same pickled bytes): only its helper changed.
    assert run_map_sync(greet, ["ada", "bob"], host=host) == ["bonjour, ada", "bonjour, bob"]


def test_a_module_edited_while_a_job_ran_is_not_reused(host: LocalHost, project: Path) -> None:
    """The edit lands after the worker imported the module, before the job ended: the
    worker's copy is already old when the job is over."""
    name = _unique("racy")
    path = project / f"{name}.py"
    _write(
        path,
        """\
        from pathlib import Path

        def version():
            return 1

        def edit_myself():
            Path(__file__).write_text('def version():\\n    return 22\\n')
            return version()
        """,
    )
    _let_settle()
    module = importlib.import_module(name)
    assert run_function_sync(module.edit_myself, host=host) == 1
    assert run_function_sync(module.version, host=host) == 22


def test_unchanged_code_keeps_its_warm_worker(host: LocalHost, project: Path) -> None:
    name = _unique("stable")
    _write(project / f"{name}.py", "import os\n\ndef pid():\n    return os.getpid()\n")
    _let_settle()
    pid = importlib.import_module(name).pid
    first = run_function_sync(pid, host=host)
    assert [run_function_sync(pid, host=host) for _ in range(3)] == [first] * 3

    # Touching another file of the project (outputs, notes) retires nothing.
    (project / "notes.txt").write_text("not code")
    assert run_function_sync(pid, host=host) == first


def test_a_module_created_after_a_job_looked_for_it_is_found(
    host: LocalHost, project: Path
) -> None:
    """Python trusts a folder's listing while the folder's mtime is unchanged; a module
    created within the same timestamp tick as a job's failed import (simulated here by
    restoring the folder's mtime) must still be found by the next job."""
    probe, late = _unique("probe"), _unique("late")
    _write(
        project / f"{probe}.py",
        """\
        import importlib

        def load(name):
            try:
                return importlib.import_module(name).VALUE
            except ModuleNotFoundError:
                return None
        """,
    )
    _let_settle()  # so the worker stays warm
    load = importlib.import_module(probe).load
    assert run_function_sync(load, host=host, args=(late,)) is None

    listed = project.stat()
    _write(project / f"{late}.py", "VALUE = 'found'\n")
    os.utime(project, ns=(listed.st_atime_ns, listed.st_mtime_ns))
    assert run_function_sync(load, host=host, args=(late,)) == "found"
