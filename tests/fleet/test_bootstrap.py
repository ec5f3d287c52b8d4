"""The boot script installs only the bundle its caller built."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from meadow_core.fleet import bootstrap


def _bundle(path: Path, text: str) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("lib/marker.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _fetch_and_unpack(script: str) -> str:
    """The boot script's download step (the rest starts an agent as root)."""
    return script.split("python3 - <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]


def test_a_replaced_bundle_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install = tmp_path / "opt"
    monkeypatch.setattr(bootstrap, "INSTALL_ROOT", str(install))
    published = tmp_path / "bundle.tar.gz"
    digest = _bundle(published, "the caller's agent")

    # The cloud driver's download, here a read of the "store" (a file).
    fetch = f"import pathlib\ndata = pathlib.Path({str(published)!r}).read_bytes()\n"
    script = bootstrap.boot_script(fetch, digest, "meadow_core.x", {"a": "b"})
    subprocess.run([sys.executable, "-c", _fetch_and_unpack(script)], check=True)
    assert (install / "lib" / "marker.txt").read_text() == "the caller's agent"

    (install / "lib" / "marker.txt").unlink()
    _bundle(published, "a task's replacement")  # overwritten in the store
    result = subprocess.run(
        [sys.executable, "-c", _fetch_and_unpack(script)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "does not match its sha256" in result.stderr
    assert not (install / "lib" / "marker.txt").exists()


def test_a_fetch_snippet_cannot_end_the_here_document() -> None:
    with pytest.raises(ValueError, match="here-document"):
        bootstrap.boot_script("data = b''\nPY\nrm -rf /\n", "0" * 64, "meadow_core.x", {})
