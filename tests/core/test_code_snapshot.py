"""Code snapshots on their own: content-defined chunks of large files, ignore rules, the
digest cache, old manifests, and materializing once, crash-safe."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from meadow_core import code_snapshot
from meadow_core.code_snapshot import (
    CHUNK_THRESHOLD,
    CodeSnapshot,
    SnapshotChangedError,
    build_snapshot,
    materialize,
    upload_snapshot_stats,
)
from meadow_core.protocol import pack
from meadow_core.transport.local import LocalObjectStore


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_large_file_edited_in_the_middle_uploads_about_one_chunk(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    big = project / "weights.bin"
    size = 12 << 20
    big.write_bytes(random.Random(0).randbytes(size))
    (project / "small.py").write_text("X = 1\n")
    store = LocalObjectStore(tmp_path / "store")

    first = upload_snapshot_stats(*build_snapshot([str(project)], None), store)
    (entry,) = [f for f in CodeSnapshot.from_manifest(store.get(first.key)).files if f.chunks]
    assert len(entry.chunks) >= 6  # cut into chunks, each its own object
    assert first.bytes == size + len("X = 1\n")

    with open(big, "r+b") as f:
        f.seek(size // 2)
        f.write(b"edited in the middle")
    second = upload_snapshot_stats(*build_snapshot([str(project)], None), store)
    assert 1 <= second.objects <= 2 and second.bytes <= 2 * (4 << 20)
    assert second.bytes < size // 3

    paths, _ = materialize(second.key, store, tmp_path / "machine")
    copy = Path(paths[0])
    assert _digest(copy / "weights.bin") == _digest(big)
    assert (copy / "small.py").read_text() == "X = 1\n"


def test_only_large_files_are_chunked_and_small_trees_keep_their_manifest(
    tmp_path: Path,
) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "a.py").write_bytes(b"a" * 1000)
    (project / "at_threshold.bin").write_bytes(b"b" * CHUNK_THRESHOLD)
    snapshot, _ = build_snapshot([str(project)], None)
    assert all(not f.chunks for f in snapshot.files)
    # A manifest without chunked files keeps the original four-field entries, so its
    # key equals the one earlier versions computed and stored manifests stay reusable.
    old_style = pack(
        {
            "roots": snapshot.roots,
            "on_path": snapshot.on_path,
            "working_root": snapshot.working_root,
            "files": sorted([f.root, f.path, f.digest, f.mode] for f in snapshot.files),
        }
    )
    assert snapshot.manifest() == old_style
    assert CodeSnapshot.from_manifest(old_style).files == sorted(snapshot.files)


def test_an_old_manifest_in_the_store_still_materializes(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    content = b"print('from an old snapshot')\n"
    digest = hashlib.sha256(content).hexdigest()
    store.put(f"code/files/{digest}", content)
    manifest = pack(
        {
            "roots": ["/src"],
            "on_path": [True],
            "working_root": 0,
            "files": [[0, "pkg/run.py", digest, 0o755]],
        }
    )
    key = "code/manifests/" + hashlib.sha256(manifest).hexdigest()
    store.put(key, manifest)
    paths, working = materialize(key, store, tmp_path / "machine")
    run = Path(paths[0]) / "pkg" / "run.py"
    assert run.read_bytes() == content and os.access(run, os.X_OK)
    assert working == paths[0]


def test_ignore_rules_defaults_meadowignore_and_negation(tmp_path: Path) -> None:
    project = tmp_path / "p"
    names = [
        "keep.py",
        "pkg/mod.py",
        "skip_me.py",
        "build/gen.py",
        "pkg/build/deep.py",
        "__pycache__/x.py",
        "pkg/__pycache__/y.py",
        "node_modules/m.py",
        ".git/hooks.py",
        "x.pyc",
        "data/table.csv",
        "data/keep.csv",
        "lib.egg-info/PKG.py",
    ]
    for name in names:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("")
    (project / "env" / "pyvenv.cfg").parent.mkdir()
    (project / "env" / "pyvenv.cfg").write_text("")
    (project / "env" / "site.py").write_text("")
    (project / ".meadowignore").write_text("# comment\nskip_me.py\nbuild/\n*.csv\n")
    snapshot, _ = build_snapshot([str(project)], None)
    assert sorted(f.path for f in snapshot.files) == [".meadowignore", "keep.py", "pkg/mod.py"]
    # A negation re-includes a file (the rules then go through pathspec one by one).
    (project / ".meadowignore").write_text("skip_me.py\nbuild/\n*.csv\n!data/keep.csv\n")
    snapshot, _ = build_snapshot([str(project)], (".py", ".csv"))
    assert sorted(f.path for f in snapshot.files) == ["data/keep.csv", "keep.py", "pkg/mod.py"]


def test_unchanged_files_are_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files changed within the racy window are always read again; shorten it (2 s by
    # default) so the test need not wait, and wait that long once.
    monkeypatch.setattr(code_snapshot, "_RACY_NS", 50_000_000)
    project = tmp_path / "p"
    project.mkdir()
    for i in range(40):
        (project / f"m{i}.py").write_text(f"V = {i}\n")
    time.sleep(0.1)
    code_snapshot.clear_caches()
    build_snapshot([str(project)], None)
    read: list[str] = []
    real = code_snapshot._hash_file

    def counting(path: str, size: int) -> tuple[Any, bytes | None]:
        read.append(path)
        return real(path, size)

    monkeypatch.setattr(code_snapshot, "_hash_file", counting)
    (project / "m7.py").write_text("V = 'changed'\n")
    snapshot, _ = build_snapshot([str(project)], None)
    assert read == [str(project / "m7.py")]
    changed = [f for f in snapshot.files if f.path == "m7.py"]
    assert changed[0].digest == hashlib.sha256(b"V = 'changed'\n").hexdigest()
    # A file just written is read every time: an edit in the same timestamp tick must
    # not hide behind an unchanged (size, mtime).
    read.clear()
    build_snapshot([str(project)], None)
    assert read == [str(project / "m7.py")]


def test_a_file_changed_after_hashing_is_not_stored_under_the_old_hash(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    big = project / "big.bin"
    big.write_bytes(random.Random(1).randbytes(CHUNK_THRESHOLD + (1 << 20)))
    snapshot, sources = build_snapshot([str(project)], None)
    big.write_bytes(random.Random(2).randbytes(CHUNK_THRESHOLD + (1 << 20)))
    store = LocalObjectStore(tmp_path / "store")
    with pytest.raises(SnapshotChangedError, match=r"big\.bin changed"):
        upload_snapshot_stats(snapshot, sources, store)
    assert not store.exists(snapshot.key)  # no manifest whose contents are missing


def test_materialize_leaves_nothing_half_made_when_an_object_is_missing(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "a.py").write_text("A = 1\n")
    (project / "b.py").write_text("B = 2\n")
    store = LocalObjectStore(tmp_path / "store")
    stats = upload_snapshot_stats(*build_snapshot([str(project)], None), store)
    store.delete_prefix("code/files/" + hashlib.sha256(b"B = 2\n").hexdigest())
    cache = tmp_path / "machine"
    with pytest.raises(FileNotFoundError):
        materialize(stats.key, store, cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    # Once the object is back, the next task materializes it whole. (This process
    # remembers the object as stored for a few minutes; forget that, as a new caller
    # process would.)
    code_snapshot.clear_caches()
    upload_snapshot_stats(*build_snapshot([str(project)], None), store)
    paths, _ = materialize(stats.key, store, cache)
    assert (Path(paths[0]) / "b.py").read_text() == "B = 2\n"


def test_a_link_out_of_the_code_root_never_ships_its_target(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "outside" / "secret.py"
    secret.parent.mkdir()
    secret.write_text("TOKEN = 'not yours'\n")
    project = tmp_path / "p"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "real.py").write_text("VALUE = 1\n")
    (project / "pkg" / "alias.py").symlink_to(project / "pkg" / "real.py")  # stays inside
    (project / "stolen.py").symlink_to(secret)
    snapshot, sources = build_snapshot([str(project)], (".py",))
    assert sorted(f.path for f in snapshot.files) == ["pkg/alias.py", "pkg/real.py"]
    assert all(b"not yours" not in sources.read(k) for k in snapshot.object_keys())
    assert "stolen.py" in caplog.text and "outside" in caplog.text
