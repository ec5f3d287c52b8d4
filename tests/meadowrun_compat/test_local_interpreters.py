"""Local interpreters as Meadowrun describes them: ``LocalPipInterpreter(path)`` is
rebuilt with that interpreter's own Python version."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from meadow_core import InvalidRequestError, LocalPipInterpreter


def _other_minor_python() -> str | None:
    """A Python of another minor version on this machine (pyenv's or the system's)."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    candidates += [f"/usr/bin/python3.{minor}" for minor in range(8, 15)]
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            continue
        version = subprocess.run(
            [candidate, "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if version and version != here:
            return candidate
    return None


def test_local_pip_interpreter_describes_its_own_python_version() -> None:
    other = _other_minor_python()
    if other is None:
        pytest.skip("no Python of another minor version on this machine")
    version = subprocess.run(
        [other, "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        spec = LocalPipInterpreter(other).environment_spec()
    except InvalidRequestError as exc:
        # Until environments of other versions are built (issue 16 item 3), the refusal
        # must come before anything runs and name the interpreter's own version.
        assert f"is Python {version}" in str(exc)
    else:
        assert spec.python_version == version
    with pytest.raises(InvalidRequestError, match="python_version"):
        LocalPipInterpreter(sys.executable, python_version="3.5").environment_spec()
