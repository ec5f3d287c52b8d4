"""Deployment.mirror_local with code selection: snapshots shipped by content hash and
materialized on the machine, as a cloud machine would get them."""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from tasks import managed_host

from meadow_core import Deployment, InvalidRequestError, LocalHost, run_function_sync
from meadow_core.code_snapshot import build_snapshot, upload_snapshot
from meadow_core.transport.local import LocalObjectStore


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHost]:
    with managed_host(tmp_path_factory.mktemp("meadow")) as h:
        yield h


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


def test_unbuilt_deployments_say_what_is_missing() -> None:
    with pytest.raises(NotImplementedError, match="interpreter"):
        asyncio.run(Deployment.mirror_local(interpreter=object()))
    with pytest.raises(NotImplementedError, match="git_repo"):
        Deployment.git_repo("https://example.invalid/repo.git")
    assert os.getcwd()
