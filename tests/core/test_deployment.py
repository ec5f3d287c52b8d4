"""Deployment.mirror_local with code selection: snapshots shipped by content hash and
materialized on the machine, as a cloud machine would get them."""

from __future__ import annotations

import asyncio
import shutil
import textwrap
from pathlib import Path

import env_tasks
import pytest
from tasks import managed_host

from meadow_core import (
    Deployment,
    InvalidRequestError,
    LocalHost,
    PipRequirementsFile,
    RunMapTasksFailedException,
    TaskException,
    UvProjectPath,
    run_function_sync,
    run_map_sync,
)
from meadow_core.code_snapshot import build_snapshot, upload_snapshot
from meadow_core.interpreters import RESOLVE_VARIABLE
from meadow_core.transport.local import LocalObjectStore


def _project(root: Path, module: str) -> Path:
    """A small project the caller's sys.path does not know."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "input.txt").write_text("rows from the data file\n")
    (root / "notes.txt").write_text("not code\n")
    (root / f"{module}.py").write_text(
        textwrap.dedent(
            """
            import os

            def read_data():
                with open("data/input.txt") as f:
                    return f.read(), __file__, os.getcwd()
            """
        )
    )
    (root / ".git").mkdir()
    (root / ".git" / "config.py").write_text("raise SystemExit('must not ship')\n")
    return root


def test_code_and_data_files_are_shipped_and_run_from_a_copy(
    host: LocalHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _project(tmp_path / "project", "shipped_module_a")
    monkeypatch.chdir(project)
    deployment = Deployment.mirror_local(
        include_sys_path=False, additional_sys_paths=[str(project)], globs=["data/*.txt"]
    )
    text, module_file, cwd = run_function_sync(
        "shipped_module_a.read_data", host, deployment=deployment
    )
    assert text == "rows from the data file\n"
    # The task ran from the materialized snapshot, not from the caller's files.
    assert module_file.startswith(str(host.place.home / "code"))
    assert cwd.startswith(str(host.place.home / "code"))
    assert not (Path(cwd) / ".git").exists()
    assert not (Path(cwd) / "notes.txt").exists()  # only .py files and the globs


def test_a_module_outside_the_snapshot_is_not_importable(
    host: LocalHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _project(tmp_path / "project", "shipped_module_b")
    monkeypatch.chdir(tmp_path)
    deployment = Deployment.mirror_local(include_sys_path=False, globs=["project/notes.txt"])
    with pytest.raises(Exception, match="shipped_module_b"):
        run_function_sync("shipped_module_b.read_data", host, deployment=deployment)
    assert project.exists()


def test_a_map_whose_module_is_missing_remotely_names_it_in_every_task(
    host: LocalHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The function pickles by reference to a module the deployment does not ship:
    every task (not only the first a worker loads) reports the missing module."""
    project = tmp_path / "unshipped"
    project.mkdir()
    (project / "unshipped_module_c.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(project))
    import unshipped_module_c

    deployment = Deployment.mirror_local(include_sys_path=False)
    with pytest.raises(RunMapTasksFailedException) as info:
        run_map_sync(
            unshipped_module_c.double,
            list(range(4)),
            host=host,
            deployment=deployment,
            num_concurrent_tasks=1,
        )
    failed = info.value.failed_tasks
    assert [t.task_id for t in failed] == [0, 1, 2, 3]
    for task in failed:
        assert task.exception is not None
        assert "ModuleNotFoundError" in task.exception[0], task.exception
        assert "unshipped_module_c" in task.exception[1], task.exception


def test_editing_one_file_uploads_about_one_file(tmp_path: Path) -> None:
    project = tmp_path / "big"
    for i in range(50):
        (project / f"pkg{i % 5}").mkdir(parents=True, exist_ok=True)
        (project / f"pkg{i % 5}" / f"m{i}.py").write_text(f"VALUE = {i}\n")
    store = LocalObjectStore(tmp_path / "store")
    first, sources = build_snapshot([str(project)], (".py",))
    assert upload_snapshot(first, sources, store)[1] == 50
    (project / "pkg3" / "m13.py").write_text("VALUE = 'changed'\n")
    second, sources = build_snapshot([str(project)], (".py",))
    key, uploaded = upload_snapshot(second, sources, store)
    assert uploaded == 1 and key != first.key


def test_meadowignore_and_default_ignores(tmp_path: Path) -> None:
    project = tmp_path / "p"
    for name in ("keep.py", "skip_me.py", "build/gen.py", "__pycache__/x.py", "venv/lib.py"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("")
    (project / "env" / "pyvenv.cfg").parent.mkdir()
    (project / "env" / "pyvenv.cfg").write_text("")
    (project / "env" / "site.py").write_text("")
    (project / ".meadowignore").write_text("skip_me.py\nbuild/\n")
    snapshot, _ = build_snapshot([str(project)], (".py",))
    assert sorted(f.path for f in snapshot.files) == ["keep.py"]


def test_extensions_select_what_is_shipped(tmp_path: Path) -> None:
    project = _project(tmp_path / "p", "m")
    snapshot, _ = build_snapshot([str(project)], (".txt",))
    assert sorted(f.path for f in snapshot.files) == ["data/input.txt", "notes.txt"]


def test_a_glob_outside_every_root_is_refused_before_anything_runs(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    inside = tmp_path / "cwd"
    inside.mkdir()
    with pytest.raises(InvalidRequestError, match="outside the working directory"):
        build_snapshot([], (".py",), globs=[str(outside)], working_directory=str(inside))


def test_an_unknown_interpreter_says_what_works() -> None:
    with pytest.raises(NotImplementedError, match=r"interpreter=object.*PoetryProjectPath"):
        asyncio.run(Deployment.mirror_local(interpreter=object()))


def test_a_requirements_file_builds_an_environment_once(host: LocalHost, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    deployment = Deployment.mirror_local(interpreter=PipRequirementsFile(str(requirements)))
    executable, version = run_function_sync(
        env_tasks.report_environment, host, deployment=deployment
    )
    assert version == "1.16.0"
    assert executable.startswith(str(host.place.home / "envs"))
    packed = list((host.place.home / "store" / "envs" / "packed").iterdir())
    assert len(packed) == 1  # packed into the store for other machines
    # Two tasks of a map that start together on a new spec wait for one build.
    requirements.write_text("six==1.16.0\n# another spec, built by the map\n")
    deployment = Deployment.mirror_local(interpreter=PipRequirementsFile(str(requirements)))
    results = run_map_sync(
        env_tasks.report_environment, [1, 2], host, deployment=deployment, num_concurrent_tasks=2
    )
    assert len({r[0] for r in results}) == 1 and results[0][0] != executable
    assert len(list((host.place.home / "envs").glob("*/.complete"))) == 2
    log = (host.place.home / "agent.log").read_text()
    assert log.count("built environment") == 2


def test_an_environment_is_unpacked_from_the_store_instead_of_rebuilt(
    tmp_path: Path,
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    with managed_host(tmp_path / "first") as first:
        deployment = Deployment.mirror_local(interpreter=PipRequirementsFile(str(requirements)))
        run_function_sync(env_tasks.report_environment, first, deployment=deployment)
        packed = first.place.home / "store" / "envs" / "packed"
        (archive,) = packed.iterdir()
    # Another machine sharing the store (here: a copy of it) finds the packed build.
    second_home = tmp_path / "second"
    (second_home / "store" / "envs" / "packed").mkdir(parents=True)
    shutil.copy(archive, second_home / "store" / "envs" / "packed" / archive.name)
    with managed_host(second_home) as second:
        deployment = Deployment.mirror_local(interpreter=PipRequirementsFile(str(requirements)))
        _, version = run_function_sync(env_tasks.report_environment, second, deployment=deployment)
        assert version == "1.16.0"
        log = (second_home / "agent.log").read_text()
    assert "unpacking environment" in log and "built environment" not in log


def test_bad_environment_files_fail_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="cannot be read"):
        asyncio.run(
            Deployment.mirror_local(interpreter=PipRequirementsFile(str(tmp_path / "none.txt")))
        )
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (project / "uv.lock").write_text("this is = = not toml")
    with pytest.raises(InvalidRequestError, match=r"uv\.lock is not valid TOML"):
        asyncio.run(Deployment.mirror_local(interpreter=UvProjectPath(str(project))))
    with pytest.raises(InvalidRequestError, match="python_version"):
        PipRequirementsFile(
            str(project / "pyproject.toml"), python_version="2.7"
        ).environment_spec()


def test_an_unresolvable_requirement_fails_on_the_caller_with_uvs_words(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("this-package-does-not-exist-meadow==0.0.1\n")
    with pytest.raises(InvalidRequestError, match="this-package-does-not-exist-meadow") as caught:
        asyncio.run(Deployment.mirror_local(interpreter=PipRequirementsFile(str(requirements))))
    # uv's own explanation, not a traceback; the deployment itself refused, so nothing ran.
    assert "does not resolve" in str(caught.value) and "Traceback" not in str(caught.value)


def test_an_unresolvable_requirement_fails_the_task_with_uvs_words_if_unchecked(
    host: LocalHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the caller's check off (an index only machines reach), the machine's build
    fails the task with uv's words."""
    monkeypatch.setenv(RESOLVE_VARIABLE, "0")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("this-package-does-not-exist-meadow==0.0.1\n")
    deployment = Deployment.mirror_local(interpreter=PipRequirementsFile(str(requirements)))
    with pytest.raises(TaskException, match="this-package-does-not-exist-meadow"):
        run_function_sync(env_tasks.report_environment, host, deployment=deployment)
