"""A machine refuses a content-addressed object whose bytes do not match its key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from meadow_core import protocol
from meadow_core.remote.mirror import StoreMirror, TamperedObjectError
from meadow_core.transport.local import LocalObjectStore


def test_an_overwritten_function_is_refused_and_never_kept(tmp_path: Path) -> None:
    remote = LocalObjectStore(tmp_path / "remote")
    local = LocalObjectStore(tmp_path / "local")
    mirror = StoreMirror(remote, local)
    honest = protocol.content_key(b"def task(): ...", "functions")
    remote.put(honest, b"def task(): ...")
    mirror.copy_down(honest)
    assert local.get(honest) == b"def task(): ..."

    poisoned = protocol.content_key(b"the original pickle", "functions")
    remote.put(poisoned, b"a pickle of the attacker's choosing")
    with pytest.raises(TamperedObjectError, match="does not match its content address"):
        mirror.copy_down(poisoned)
    assert not local.exists(poisoned), "nothing of it is kept for the next task"

    # Keys that are not content hashes (an environment archive) are taken as they are.
    archive = "envs/packed/" + hashlib.sha256(b"spec").hexdigest() + "-abc.tar.zst"
    remote.put(archive, b"archive bytes")
    mirror.copy_down(archive)
    assert local.get(archive) == b"archive bytes"
